// Shared by publish.html and play.html: the page state every test and overlay reads, and a
// non-trickle WHIP/WHEP client (RFC 9725): offer with all host candidates, POST, answer.

const $ = (id) => document.getElementById(id);

function setState(s, err) {
  window.tessera.state = s;
  if (err) window.tessera.error = String(err);
  $('state').textContent = err ? `${s}: ${err}` : s;
}

// Creates the offer, waits for ICE gathering (host candidates come at once; at most 2 s),
// POSTs it to `url` and applies the answer. Returns { location, etag, answer }; throws
// "<status> <code>: <message>" on a refusal.
async function whipNegotiate(pc, url, token) {
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(r => {
    if (pc.iceGatheringState === 'complete') return r();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r();
    setTimeout(r, 2000);
  });
  const resp = await fetch(url, { method: 'POST', body: pc.localDescription.sdp,
    headers: { 'Content-Type': 'application/sdp', 'Authorization': `Bearer ${token}` } })
    .catch(() => { throw `cannot reach the server — ${window.tesseraHint('connect_failed')}`; });
  if (resp.status !== 201) {
    const e = await resp.json().catch(() => ({ code: resp.status, message: resp.statusText }));
    throw window.tesseraExplain(resp.status, e);
  }
  const answer = await resp.text();
  await pc.setRemoteDescription({ type: 'answer', sdp: answer });
  // The session URL is relative to the answering server, which is not the page's when a
  // cluster node redirected the POST to the room's node.
  const location = resp.headers.get('Location');
  return { location: location && new URL(location, resp.url).href, etag: resp.headers.get('ETag'), answer };
}

// Ends a session (DELETE on its Location).
async function whipDelete(location, token) {
  if (location) await fetch(location, { method: 'DELETE', headers: { 'Authorization': `Bearer ${token}` } });
}

// Ends the session when the tab closes or navigates away (pagehide), so the server does not
// wait for the liveness timeout. `keepalive` lets the request outlive the page.
function whipDeleteOnPageHide(getLocation, getToken) {
  window.addEventListener('pagehide', () => {
    const location = getLocation();
    if (location) fetch(location, { method: 'DELETE', keepalive: true, headers: { 'Authorization': `Bearer ${getToken()}` } });
  });
}
