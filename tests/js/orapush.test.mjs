// Unit tests of web/orapush.js with node's test runner: the client runs in a
// sandbox with a fake WebSocket and mocked timers, so reconnects, recovery
// and coalescing are checked without a browser or a server.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import vm from "node:vm";

const source = fs.readFileSync(new URL("../../web/orapush.js", import.meta.url), "utf8");

class FakeSocket {
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.readyState = 0;
    FakeSocket.all.push(this);
  }
  send(text) { this.sent.push(JSON.parse(text)); }
  close() { this.serverClose(1000); }
  // Test-side controls.
  open() { this.readyState = 1; this.onopen(); }
  frame(obj) { this.onmessage({ data: JSON.stringify(obj) }); }
  serverClose(code) { this.readyState = 3; this.onclose({ code, reason: "" }); }
}

function load(t, { random = 0 } = {}) {
  FakeSocket.all = [];
  t.mock.timers.enable({ apis: ["setTimeout"], now: Date.now() });
  const refreshed = [];
  const sandbox = {
    WebSocket: FakeSocket,
    location: { protocol: "https:", host: "apex.example" },
    setTimeout: globalThis.setTimeout,
    clearTimeout: globalThis.clearTimeout,
    console: { warn() {} },
    Math: Object.assign(Object.create(Math), { random: () => random }),
    apex: { region: (id) => ({ refresh: () => refreshed.push(id) }) },
    atob: (b64) => Buffer.from(b64, "base64").toString("binary"),
    Promise,
    Date,
  };
  sandbox.window = sandbox;
  vm.runInNewContext(source, sandbox);
  return { orapush: sandbox.orapush, sockets: FakeSocket.all, refreshed };
}

const message = (offset, data, epoch = "e1") => ({ type: "message", channel: "emp", epoch, offset, id: String(offset), data });

test("connects to /ws on the page's host and subscribes once open", (t) => {
  const { orapush, sockets } = load(t);
  const client = orapush.connect();
  client.subscribe("emp", () => {});
  assert.equal(sockets[0].url, "wss://apex.example/ws");
  assert.deepEqual(sockets[0].sent, []);
  sockets[0].open();
  assert.deepEqual(sockets[0].sent, [{ op: "subscribe", channel: "emp" }]);
});

test("delivers messages in order and drops ones already seen", (t) => {
  const { orapush, sockets } = load(t);
  const got = [];
  orapush.connect().subscribe("emp", (data, frame) => got.push(frame.offset));
  sockets[0].open();
  sockets[0].frame({ type: "subscribed", channel: "emp", epoch: "e1", offset: 0, recovered: false });
  for (const o of [1, 2, 2, 1, 3]) sockets[0].frame(message(o, {}));
  assert.deepEqual(got, [1, 2, 3]);
});

test("reconnects with backoff and resubscribes from the last offset", (t) => {
  const { orapush, sockets } = load(t);
  const resets = [];
  const client = orapush.connect(null, { onReset: (c) => resets.push(c) });
  client.subscribe("emp", () => {});
  sockets[0].open();
  sockets[0].frame({ type: "subscribed", channel: "emp", epoch: "e1", offset: 4, recovered: false });
  sockets[0].frame(message(5, {}));
  sockets[0].serverClose(1001);
  assert.equal(client.state, "disconnected");
  // random() = 0: the first delay is half of 500 ms.
  t.mock.timers.tick(249);
  assert.equal(sockets.length, 1);
  t.mock.timers.tick(1);
  assert.equal(sockets.length, 2);
  sockets[1].open();
  assert.deepEqual(sockets[1].sent, [{ op: "subscribe", channel: "emp", since: { epoch: "e1", offset: 5 } }]);
  sockets[1].frame({ type: "subscribed", channel: "emp", epoch: "e1", offset: 7, recovered: true });
  assert.deepEqual(resets, []);
});

test("calls onReset when the missed messages could not be replayed", (t) => {
  const { orapush, sockets } = load(t);
  const resets = [];
  const got = [];
  const client = orapush.connect(null, { onReset: (c) => resets.push(c) });
  client.subscribe("emp", (d, f) => got.push(f.epoch + ":" + f.offset));
  sockets[0].open();
  sockets[0].frame({ type: "subscribed", channel: "emp", epoch: "e1", offset: 9, recovered: false });
  sockets[0].serverClose(1001);
  t.mock.timers.tick(250);
  sockets[1].open();
  sockets[1].frame({ type: "subscribed", channel: "emp", epoch: "e2", offset: 0, recovered: false });
  assert.deepEqual(resets, ["emp"]);
  sockets[1].frame(message(1, {}, "e2"));
  assert.deepEqual(got, ["e2:1"]);
});

test("backoff doubles up to 20 s", (t) => {
  const { orapush, sockets } = load(t, { random: 0.999999 });
  orapush.connect();
  const delays = [];
  for (let i = 0; i < 8; i++) {
    const before = sockets.length;
    sockets[sockets.length - 1].serverClose(1006);
    let waited = 0;
    while (sockets.length === before) { t.mock.timers.tick(10); waited += 10; }
    delays.push(waited);
  }
  assert.deepEqual(delays, [500, 1000, 2000, 4000, 8000, 16000, 20000, 20000]);
});

test("refreshRegion turns a burst into one APEX region refresh", (t) => {
  const { orapush, sockets, refreshed } = load(t);
  orapush.connect().refreshRegion("emp", "emp_report");
  sockets[0].open();
  sockets[0].frame({ type: "subscribed", channel: "emp", epoch: "e1", offset: 0, recovered: false });
  for (let o = 1; o <= 5; o++) sockets[0].frame(message(o, { message: "REFRESH" }));
  assert.deepEqual(refreshed, []);
  t.mock.timers.tick(250);
  assert.deepEqual(refreshed, ["emp_report"]);
  sockets[0].frame(message(6, { message: "REFRESH" }));
  t.mock.timers.tick(250);
  assert.deepEqual(refreshed, ["emp_report", "emp_report"]);
});

test("unsubscribing the last handler unsubscribes the channel", (t) => {
  const { orapush, sockets } = load(t);
  const client = orapush.connect();
  const sub = client.subscribe("emp", () => {});
  sockets[0].open();
  sub.unsubscribe();
  assert.deepEqual(sockets[0].sent.at(-1), { op: "unsubscribe", channel: "emp" });
});

test("getToken: the token goes first, then the subscriptions; it is refreshed before exp", async (t) => {
  const { orapush, sockets } = load(t);
  const exp = Math.floor(Date.now() / 1000) + 120;
  const payload = Buffer.from(JSON.stringify({ sub: "SCOTT", exp })).toString("base64url");
  let calls = 0;
  const token = () => { calls += 1; return Promise.resolve(`h.${payload}.s${calls}`); };
  const client = orapush.connect(null, { getToken: token });
  client.subscribe("emp", () => {});
  sockets[0].open();
  await Promise.resolve();
  await Promise.resolve();
  assert.deepEqual(sockets[0].sent, [
    { op: "auth", token: `h.${payload}.s1` },
    { op: "subscribe", channel: "emp" },
  ]);
  // 120 s left: the refresh comes 30 s before expiry.
  t.mock.timers.tick(89000);
  await Promise.resolve();
  assert.equal(calls, 1);
  t.mock.timers.tick(2000);
  await Promise.resolve();
  await Promise.resolve();
  assert.equal(calls, 2);
  assert.deepEqual(sockets[0].sent.at(-1), { op: "auth", token: `h.${payload}.s2` });
});
