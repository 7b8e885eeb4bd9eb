// An extension page (origin chrome-extension://<id>, no host permissions, so CORS applies) that
// asks for the object shape in the request and wraps it, as Cloudflare /generate apps do.
"use strict";

runApp(async () => {
  const res = await fetch(ISSUER + "/api/turn-credentials?shape=object", { method: "POST" });
  if (!res.ok) throw new Error("credential request failed: HTTP " + res.status);
  const data = await res.json();
  window.appResult.origin = location.origin;
  return [data.iceServers];
});
