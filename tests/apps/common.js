// The part every test page shares, after the app's own code produced its `iceServers`: gather
// relay candidates with the servers exactly as the app passes them, then one relay-only call per
// transport between two peer connections in this page. The outcome is `window.appResult`.
"use strict";

window.appResult = { done: false };

const ISSUER = new URLSearchParams(location.search).get("issuer");

function transportOf(url) {
  if (url.startsWith("turns:")) return "tls";
  if (url.startsWith("turn:")) return url.includes("transport=tcp") ? "tcp" : "udp";
  return "stun";
}

// The same servers with only `transport`'s TURN URLs (the test's choice, not the app's).
function only(iceServers, transport) {
  return iceServers
    .map((s) => Object.assign({}, s, { urls: [].concat(s.urls).filter((u) => transportOf(u) === transport) }))
    .filter((s) => s.urls.length > 0);
}

async function gather(config) {
  const pc = new RTCPeerConnection(config);
  const relays = [];
  pc.createDataChannel("probe");
  const complete = new Promise((resolve) => {
    pc.onicecandidate = (e) => {
      if (!e.candidate) return resolve();
      if (e.candidate.type === "relay") {
        // Chromium leaves relayProtocol unset on UDP relay candidates: the TURN URL says it.
        // Firefox gives neither on the candidate: its stats do (below).
        const url = e.candidate.url || e.url || "";
        const protocol = e.candidate.relayProtocol || (url ? transportOf(url) : null);
        relays.push({ protocol, url, address: e.candidate.address + ":" + e.candidate.port });
      }
    };
    setTimeout(resolve, 15000);
  });
  await pc.setLocalDescription(await pc.createOffer());
  await complete;
  if (relays.some((r) => !r.protocol)) {
    (await pc.getStats()).forEach((s) => {
      if (s.type !== "local-candidate" || s.candidateType !== "relay") return;
      const r = relays.find((x) => x.address === (s.address || s.ip) + ":" + s.port);
      if (r && !r.protocol) {
        r.protocol = s.relayProtocol || null;
        r.url = r.url || s.url || "";
      }
    });
  }
  pc.close();
  return relays;
}

function timeout(ms, what) {
  return new Promise((_, reject) => setTimeout(() => reject(new Error(what)), ms));
}

async function call(config) {
  const a = new RTCPeerConnection(config);
  const b = new RTCPeerConnection(config);
  a.onicecandidate = (e) => e.candidate && b.addIceCandidate(e.candidate);
  b.onicecandidate = (e) => e.candidate && a.addIceCandidate(e.candidate);
  b.ondatachannel = (e) => {
    e.channel.onmessage = (m) => e.channel.send("echo " + m.data);
  };
  const dc = a.createDataChannel("chat");
  const opened = new Promise((resolve) => (dc.onopen = resolve));
  await a.setLocalDescription(await a.createOffer());
  await b.setRemoteDescription(a.localDescription);
  await b.setLocalDescription(await b.createAnswer());
  await a.setRemoteDescription(b.localDescription);
  try {
    await Promise.race([opened, timeout(20000, "the data channel did not open in 20 s")]);
    let echoed = 0;
    const all = new Promise((resolve) => {
      dc.onmessage = () => {
        echoed += 1;
        if (echoed === 10) resolve();
      };
    });
    for (let i = 0; i < 10; i++) dc.send("message " + i + " " + "x".repeat(100));
    await Promise.race([all, timeout(10000, "echoes missing after 10 s")]);
    const stats = await a.getStats();
    let local = null;
    stats.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) {
        local = stats.get(stats.get(s.selectedCandidatePairId).localCandidateId);
      }
    });
    return { echoed, localCandidateType: local && local.candidateType, relayProtocol: local && local.relayProtocol };
  } finally {
    a.close();
    b.close();
  }
}

// Runs the page: `getIceServers` is the app's own code and returns what the app hands to
// `RTCPeerConnection` as `iceServers`.
async function runApp(getIceServers) {
  const r = window.appResult;
  try {
    const iceServers = await getIceServers();
    r.iceServers = iceServers;
    r.relays = await gather({ iceServers, iceTransportPolicy: "relay" });
    r.calls = {};
    for (const t of ["udp", "tcp", "tls"]) {
      try {
        r.calls[t] = await call({ iceServers: only(iceServers, t), iceTransportPolicy: "relay" });
      } catch (e) {
        r.calls[t] = { error: String((e && e.message) || e) };
      }
    }
  } catch (e) {
    r.error = String((e && e.message) || e);
  }
  r.done = true;
}
