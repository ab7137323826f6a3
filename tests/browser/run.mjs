// Browser tests of rampart's web client and console, in Debian's Chromium driven by
// playwright-core. Run by tests/it/browser.rs inside a network namespace that has only loopback;
// this script starts (and restarts) the rampart binary itself, so both live in that namespace.
//
// Scenarios: two pages as two users exchange messages and see acks; a page survives a server
// restart and catches up (a message typed while the server is down is sent and acked after);
// the console shows a restart after a chaos panic; with an SFU build (RAMPART_EXPECT_SFU=1), the
// two pages hold a video call: frames decode both ways, the publisher is asked for keyframes, a
// panicking peer reconnects by itself, and leaving empties the room. Exits non-zero on the first
// failure.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, mkdirSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const BIN = process.env.RAMPART_BIN;
const CHROMIUM = process.env.RAMPART_CHROMIUM ?? '/usr/bin/chromium';
const SCREENSHOTS = process.env.RAMPART_SCREENSHOTS;
const ADMIN_TOKEN = 'browser-admin-token';
const JWT_SECRET = 'browser-jwt-secret';
/** Generous: CI machines are loaded. */
const STEP_TIMEOUT_MS = 30_000;

if (!BIN) throw new Error('RAMPART_BIN must point at the rampart binary');

const dataDir = mkdtempSync(join(tmpdir(), 'rampart-browser-'));
const env = {
  ...process.env,
  RAMPART__STORAGE__DATA_DIR: dataDir,
  RAMPART__ADMIN__TOKEN: ADMIN_TOKEN,
  RAMPART__AUTH__JWT_SECRET: JWT_SECRET,
  RAMPART__CHAOS__ENABLED: 'true',
  RAMPART__HTTP__WORKERS: '1',
  RAMPART__LOG__FORMAT: 'json',
  // Media and ICE on 127.0.0.1 only (the namespace has nothing else anyway).
  RAMPART__SFU__ICE_LOOPBACK_ONLY: 'true',
  // The embedded TURN relay: bob's page (`?ice=relay`) may only use it.
  RAMPART__SFU__TURN__ENABLED: 'true',
  RAMPART__SFU__TURN__SECRET: 'the browser test deployment secret',
  RAMPART__SFU__TURN__UDP: '127.0.0.1:0',
  RAMPART__SFU__TURN__TCP: '127.0.0.1:0',
};
const EXPECT_SFU = process.env.RAMPART_EXPECT_SFU === '1';

function log(...parts) {
  console.log(`[browser] ${parts.join(' ')}`);
}

/** Starts rampart on `port` (0: any) and resolves with its base URL once it listens. */
function startRampart(port) {
  const child = spawn(BIN, [], { env: { ...env, RAMPART__HTTP__BIND: `127.0.0.1:${port}` }, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stderr.on('data', (chunk) => process.stderr.write(chunk));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('rampart did not start')), STEP_TIMEOUT_MS);
    child.on('exit', (code) => reject(new Error(`rampart exited early with ${code}`)));
    createInterface({ input: child.stdout }).on('line', (line) => {
      if (process.env.RAMPART_BROWSER_SERVER_LOG) appendFileSync(process.env.RAMPART_BROWSER_SERVER_LOG, `${line}\n`);
      const match = line.match(/listening on (http:\/\/[0-9.:]+)/);
      if (match) {
        clearTimeout(timer);
        child.removeAllListeners('exit');
        resolve({ child, url: match[1] });
      }
    });
  });
}

function stopRampart(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once('exit', resolve);
    child.kill('SIGTERM');
  });
}

function token(user) {
  const output = execFileSync(BIN, ['token', '--user', user], { env }).toString().trim().split('\n');
  return output[output.length - 1];
}

async function adminGet(url, path) {
  const response = await fetch(`${url}${path}`, { headers: { Authorization: `Bearer ${ADMIN_TOKEN}` } });
  if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`);
  return response.json();
}

/** Resolves when `condition()` (async) holds, polling; rejects after STEP_TIMEOUT_MS. */
async function until(what, condition) {
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  for (;;) {
    if (await condition()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

async function adminPost(url, path, body) {
  const response = await fetch(`${url}${path}`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${ADMIN_TOKEN}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`);
  return response.json();
}

async function shot(page, name) {
  if (!SCREENSHOTS) return;
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true });
  log('screenshot', name);
}

/** Waits until the message list of `page` shows `body` with `status`. */
async function expectMessage(page, body, status) {
  const item = page.locator('#messages li', { hasText: body });
  await item.first().waitFor({ timeout: STEP_TIMEOUT_MS });
  if (status) {
    await page.waitForFunction(
      ([text, wanted]) => [...document.querySelectorAll('#messages li')].some((li) => li.querySelector('.body')?.textContent === text && li.dataset.status === wanted),
      [body, status],
      { timeout: STEP_TIMEOUT_MS },
    );
  }
}

async function connected(page) {
  await page.waitForSelector('#connection[data-state="open"]', { timeout: STEP_TIMEOUT_MS });
}

async function main() {
  let server = await startRampart(0);
  const port = Number(new URL(server.url).port);
  log('rampart at', server.url);
  for (const id of ['alice', 'bob']) await adminPost(server.url, '/api/users', { id, display_name: id[0].toUpperCase() + id.slice(1) });

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1',
      '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream', '--allow-loopback-in-peer-connection',
      '--disable-features=WebRtcHideLocalIpsWithMdns',
    ],
  });
  const errors = [];
  const newPage = async (name) => {
    const context = await browser.newContext({ viewport: { width: 1200, height: 720 } });
    const page = await context.newPage();
    page.setDefaultTimeout(STEP_TIMEOUT_MS);
    page.on('pageerror', (error) => errors.push(`${name}: ${error.message}`));
    page.on('console', (message) => {
      if (message.type() === 'error' && !/WebSocket|Failed to load resource|ERR_CONNECTION_REFUSED/.test(message.text())) {
        errors.push(`${name} console: ${message.text()}`);
      }
    });
    return page;
  };

  try {
    // 1. Two users, two pages: a conversation, messages both ways, acks shown.
    const alice = await newPage('alice');
    await alice.goto(`${server.url}/#token=${token('alice')}`);
    await connected(alice);
    await alice.waitForSelector('#me:has-text("Alice")');
    const bob = await newPage('bob');
    await bob.goto(`${server.url}/?ice=relay`);
    await bob.fill('#token-input', token('bob'));
    await bob.click('#token-form button[type="submit"]');
    await connected(bob);

    await alice.fill('#new-title', 'lunch');
    await alice.fill('#new-members', 'bob');
    await alice.click('#new-conversation button[type="submit"]');
    await alice.waitForSelector('#thread-title:has-text("lunch")');
    await alice.fill('#body', 'hi bob, lunch at noon?');
    await alice.press('#body', 'Enter');
    await expectMessage(alice, 'hi bob, lunch at noon?', 'acked');
    log('alice sent and saw the ack');

    await bob.locator('#conversations li', { hasText: 'lunch' }).waitFor();
    await bob.waitForSelector('#conversations .unread');
    await bob.click('#conversations li:has-text("lunch")');
    await expectMessage(bob, 'hi bob, lunch at noon?');
    await bob.fill('#body', 'noon works <b>great</b>');
    await bob.press('#body', 'Enter');
    await expectMessage(bob, 'noon works <b>great</b>', 'acked');
    await expectMessage(alice, 'noon works <b>great</b>');
    log('bob received it live, replied, alice received the reply (markup shown as text)');

    // Search with highlights.
    await alice.fill('#search-input', 'lunch');
    await alice.press('#search-input', 'Enter');
    await alice.waitForSelector('#hits mark');
    const marked = await alice.textContent('#hits mark');
    if (marked.toLowerCase() !== 'lunch') throw new Error(`highlight marks ${marked}`);
    await alice.click('#close-search');
    await shot(bob, 'chat');

    // 2. The server restarts: both pages reconnect; a message typed while it is down is sent
    // (and acked) once it is back, and the other page catches up.
    await stopRampart(server.child);
    log('rampart stopped');
    await alice.waitForSelector('#connection[data-state="reconnecting"]');
    await alice.fill('#body', 'typed while the server was down');
    await alice.press('#body', 'Enter');
    await expectMessage(alice, 'typed while the server was down', 'pending');
    server = await startRampart(port);
    log('rampart restarted on the same port');
    await connected(alice);
    await connected(bob);
    await expectMessage(alice, 'typed while the server was down', 'acked');
    await expectMessage(bob, 'typed while the server was down');
    log('the pending message was resent and acked; bob caught up');
    const duplicates = await bob.evaluate(() => {
      const ids = [...document.querySelectorAll('#messages li')].map((li) => li.dataset.id);
      return ids.length - new Set(ids).size;
    });
    if (duplicates) throw new Error(`bob shows ${duplicates} duplicate message(s)`);

    // 3. The console: the actor tree live; a chaos panic shows as a restart.
    const consolePage = await newPage('console');
    await consolePage.goto(`${server.url}/console`);
    await consolePage.fill('#token-input', ADMIN_TOKEN);
    await consolePage.click('#token-form button[type="submit"]');
    const monitor = consolePage.locator('#actors tr[data-path="/root/system_monitor"]');
    await monitor.waitFor();
    if ((await monitor.locator('.restarts').textContent()).trim() !== '0') throw new Error('a restart before the panic');
    await monitor.locator('button.panic').click();
    await consolePage.waitForFunction(
      () => document.querySelector('#actors tr[data-path="/root/system_monitor"] .restarts')?.textContent.trim() === '1',
      null,
      { timeout: STEP_TIMEOUT_MS },
    );
    await consolePage.locator('#crashes li', { hasText: '/root/system_monitor' }).first().waitFor();
    await shot(consolePage, 'console');
    await consolePage.locator('#crashes li', { hasText: '/root/system_monitor' }).first().click();
    await consolePage.waitForSelector('#crash-detail h4:has-text("Recent actions")');
    await consolePage.locator('#crash-detail .actions li', { hasText: 'chaos panic requested' }).first().waitFor();
    log('the console showed the restart and the crash record with its recent actions');

    // 4. A video call between the two pages (SFU builds only).
    // The build decides (tests/it/browser.rs says which); a build without the SFU answers /rtc
    // with 501 once the token is checked, one with it refuses a plain GET (400).
    const probe = await fetch(`${server.url}/rtc?token=${token('alice')}`);
    const sfu = EXPECT_SFU;
    if ((probe.status === 501) === sfu) throw new Error(`GET /rtc answered ${probe.status} (SFU build: ${sfu})`);
    if (sfu) {
      await videoCall(server.url, alice, bob);
    } else {
      log('no SFU in this build (/rtc answers 501): video scenario skipped');
    }

    if (errors.length) throw new Error(`page errors:\n${errors.join('\n')}`);
  } finally {
    await browser.close();
    await stopRampart(server.child);
    rmSync(dataDir, { recursive: true, force: true });
  }
  log('all scenarios passed');
}

const stats = (page) => page.evaluate(() => window.rampartVideo?.stats() ?? null);

/** Waits until `page` decoded `more` video frames beyond what it has now. */
async function framesGrow(page, name, more) {
  const start = (await stats(page))?.framesDecoded ?? 0;
  await until(`${name} to decode ${more} more frames`, async () => ((await stats(page))?.framesDecoded ?? 0) >= start + more);
}

async function videoCall(url, alice, bob) {
  await alice.click('#video-join');
  await bob.click('#video-join');
  for (const [page, name] of [[alice, 'alice'], [bob, 'bob']]) {
    await page.waitForSelector('#video-state[data-state="live"]', { timeout: STEP_TIMEOUT_MS });
    await page.waitForSelector('#video-tiles figure:not(.local) video', { timeout: STEP_TIMEOUT_MS });
    await framesGrow(page, name, 20);
  }
  log('alice and bob see each other (frames decoded on both pages)');
  const { candidateTypes: bobTypes, relayProtocols } = await stats(bob);
  if (bobTypes.length === 0 || bobTypes.some((type) => type !== 'relay')) throw new Error(`bob's media did not go through the relay: ${bobTypes}`);
  const aliceTypes = (await stats(alice)).candidateTypes;
  if (!aliceTypes.includes('host')) throw new Error(`alice's media should go direct: ${aliceTypes}`);
  log(`bob's connections use the embedded TURN relay over ${relayProtocols} (${bobTypes}), alice's go direct (${aliceTypes})`);
  await until('a keyframe request to a publisher', async () => ((await stats(alice)).pliCount + (await stats(bob)).pliCount) >= 1);
  log('publishers were asked for keyframes (pliCount >= 1)');
  await shot(bob, 'video');

  // Alice's peer panics: her page reconnects by itself and both see each other again.
  const { rooms } = await adminGet(url, '/admin/rooms');
  const room = rooms.find((r) => r.participants.length === 2);
  if (!room) throw new Error(`no room with both: ${JSON.stringify(rooms)}`);
  const aliceId = await alice.evaluate(() => window.rampartVideo.participant);
  const peer = room.participants.find((p) => p.participant === aliceId);
  await adminPost(url, '/admin/chaos/panic', { actor: peer.path });
  await alice.waitForSelector('#video-state[data-state="reconnecting"]', { timeout: STEP_TIMEOUT_MS });
  await alice.waitForSelector('#video-state[data-state="live"]', { timeout: STEP_TIMEOUT_MS });
  await framesGrow(bob, 'bob after the panic', 20);
  await framesGrow(alice, 'alice after the panic', 20);
  const after = (await adminGet(url, '/admin/rooms')).rooms.find((r) => r.name === room.name);
  if (after.participants.length !== 2) throw new Error(`ghosts or losses after the panic: ${JSON.stringify(after)}`);
  log('a panicking peer reconnected by itself; media flows both ways again, no ghosts');

  await alice.click('#video-leave');
  await bob.click('#video-leave');
  await until('the room to empty', async () => {
    const listed = (await adminGet(url, '/admin/rooms')).rooms.find((r) => r.name === room.name);
    return !listed || listed.participants.length === 0;
  });
  log('leaving emptied the room');
}

main().catch((error) => {
  console.error(`[browser] FAILED: ${error.stack ?? error}`);
  process.exit(1);
});
