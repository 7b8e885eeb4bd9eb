// An app written against generate-ice-servers, whose backend endpoint took {"ttl": N} and
// returned {"iceServers": [...]}, falling back to STUN-only on {"fallback": true}.
"use strict";

async function getIceServers() {
  const res = await fetch(ISSUER + "/api/turn/credentials", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ttl: 3600 }),
  });
  const data = await res.json();
  if (!res.ok || data.fallback) throw new Error("credential request failed: HTTP " + res.status + " " + data.error);
  return data.iceServers;
}

runApp(getIceServers);
