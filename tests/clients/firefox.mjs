#!/usr/bin/env node
// Headless Firefox (Debian's firefox-esr, driven over WebDriver BiDi by puppeteer-core) on
// Tessera's own room page: one tab per --participant "user,token,#rrggbb,tone_hz" on room.html
// with a synthetic colour and tone as the camera. After --seconds the first tab mutes its
// camera and the second shares a screen-like canvas (--screen-color) as its aux stream; after
// --seconds more the last tab leaves. Prints per tab its remote tiles (frames, centre colour,
// mute state) at each step, the room events it saw and its state.
//
// Plain HTTP on a test-host address is not a secure context: the prefs let getUserMedia and
// the page's captureStream/WebRTC run there, as Chromium's --unsafely-treat-insecure-origin-as-secure
// does. Prints one JSON line; exits 1 with {"error": ...} on failure.
import puppeteer from 'puppeteer-core';
import { parseArgs } from 'node:util';

const { values: a } = parseArgs({
  options: {
    base: { type: 'string' },
    participant: { type: 'string', multiple: true, default: [] },
    'screen-color': { type: 'string', default: '#ffffff' },
    size: { type: 'string', default: '320x180' },
    seconds: { type: 'string', default: '8' },
    firefox: { type: 'string', default: '/usr/bin/firefox-esr' },
  },
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(page, expr, ms) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await page.evaluate(expr)) return;
    await sleep(200);
  }
  throw new Error(`timed out waiting for ${expr}`);
}

async function main() {
  const seconds = Number(a.seconds) * 1000;
  const browser = await puppeteer.launch({
    browser: 'firefox',
    executablePath: a.firefox,
    headless: true,
    extraPrefsFirefox: {
      'media.navigator.streams.fake': true,
      'media.navigator.permission.disabled': true,
      'media.devices.insecure.enabled': true,
      'media.getusermedia.insecure.enabled': true,
      'dom.securecontext.allowlist': new URL(a.base).hostname,
      // Autoplay of the remote tiles without a user gesture.
      'media.autoplay.default': 0,
      'media.autoplay.blocking_policy': 0,
    },
  });
  try {
    const pages = [];
    for (const spec of a.participant) {
      const [user, token, color, tone] = spec.split(',');
      const q = new URLSearchParams({ token, source: 'synthetic', color, tone, size: a.size, autojoin: '1' });
      const page = await browser.newPage();
      await page.goto(`${a.base}/room.html?${q}`, { waitUntil: 'domcontentloaded' });
      pages.push([user, page]);
    }
    for (const [user, page] of pages) {
      await waitFor(page, "['publishing', 'failed'].includes(window.tessera.state)", 30000);
      if ((await page.evaluate('window.tessera.state')) === 'failed') {
        throw new Error(`${user}: ${await page.evaluate('window.tessera.error')} (page token ${await page.evaluate("document.getElementById('token').value.slice(-12)")}, given ${a.participant.find((s) => s.startsWith(user + ',')).split(',')[1].slice(-12)})`);
      }
    }
    const tiles = async () => Object.fromEntries(await Promise.all(pages.map(async ([u, p]) => [u, await p.evaluate('window.tessera.tiles()')])));
    const out = { users: pages.map(([u]) => u), userAgent: await pages[0][1].evaluate('navigator.userAgent') };
    await sleep(seconds);
    out.meeting = await tiles();
    await pages[0][1].evaluate("document.getElementById('cam').click()");
    if (pages.length > 1) await pages[1][1].evaluate(`window.tessera.share('${a['screen-color']}')`);
    await sleep(seconds);
    out.shared = await tiles();
    await pages[pages.length - 1][1].evaluate('window.tessera.leave()');
    await sleep(3000);
    out.after_leave = await tiles();
    out.events = Object.fromEntries(await Promise.all(pages.map(async ([u, p]) => [u, await p.evaluate('window.tessera.events')])));
    out.states = Object.fromEntries(await Promise.all(pages.map(async ([u, p]) => [u, [await p.evaluate('window.tessera.state'), await p.evaluate('window.tessera.error')]])));
    console.log(JSON.stringify(out));
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.log(JSON.stringify({ error: String(e && e.stack ? e.stack : e) }));
  process.exit(1);
});
