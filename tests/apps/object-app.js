// An app written against Cloudflare's older /generate answer, whose backend endpoint returned
// {"iceServers": {"urls": [...], "username": "...", "credential": "..."}}: the page wraps that
// one object in the array RTCPeerConnection wants.
"use strict";

async function getTurnConfig() {
  const res = await fetch(ISSUER + "/api/turn-credentials");
  if (!res.ok) throw new Error("credential request failed: HTTP " + res.status);
  const data = await res.json();
  return [data.iceServers];
}

// What the same page code does with an array answer: Chromium refuses it.
async function arrayAnswerError() {
  const res = await fetch(ISSUER + "/api/turn-credentials?shape=array");
  const data = await res.json();
  try {
    new RTCPeerConnection({ iceServers: [data.iceServers] }).close();
    return null;
  } catch (e) {
    return e.name + ": " + e.message;
  }
}

runApp(async () => {
  window.appResult.arrayAnswerError = await arrayAnswerError();
  return getTurnConfig();
});
