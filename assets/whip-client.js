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

// The pages' recovery of a lost connection (a browser does not retry a failed ICE, and the server
// ends a peer it has not heard from for 15 s): `recover(why)` runs when the connection given to
// `check` has not come up within the wait, has failed, or has stayed disconnected that long, one
// recovery at a time. Waits of 10, 20, then 30 s over successive tries; a connection resets
// them. `again(why)` tries once more after the next wait (the server was not reachable).
class ConnectionWatch {
  #timer = null;
  #tries = 0;
  #busy = false;
  constructor(recover) { this.recover = recover; }
  #wait() { return 10000 * Math.min(this.#tries + 1, 3); }
  check(pc) {
    clearTimeout(this.#timer);
    if (!pc) return;
    const s = pc.connectionState;
    if (s === 'connected') { this.#tries = 0; return; }
    if (s === 'failed') { this.#run('the connection failed'); return; }
    const wait = this.#wait();
    this.#timer = setTimeout(() => this.#run(`not connected for ${wait / 1000} s`), wait);
  }
  again(why) {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#run(why), this.#wait());
  }
  stop() { clearTimeout(this.#timer); this.#tries = 0; }
  async #run(why) {
    if (this.#busy) return;
    this.#busy = true;
    this.#tries++;
    try { await this.recover(why); } finally { this.#busy = false; }
  }
}
