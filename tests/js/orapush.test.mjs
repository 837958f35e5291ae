// Unit tests of web/orapush.js with node's test runner: the client runs in a
// sandbox with a fake WebSocket and mocked timers, so reconnects, recovery,
// coalescing, tokens and refusals are checked without a browser or a server.
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

// Lets pending promise callbacks run (setImmediate is not mocked).
const settle = () => new Promise((resolve) => setImmediate(resolve));

// Advances fake time until the client opens socket number `count`; returns the ms waited.
function waitForSocket(t, sockets, count) {
  let waited = 0;
  while (sockets.length < count) {
    assert.ok(waited < 60000, `no socket ${count} within 60 s of fake time`);
    t.mock.timers.tick(10);
    waited += 10;
  }
  return waited;
}

// onError's objects come from the sandbox's realm; the tests copy them ({ ...e })
// so that deepEqual compares plain objects of this realm.
const subscribed = (channel = "emp") => ({ type: "subscribed", channel, epoch: "e1", offset: 0, recovered: false });

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

test("a refused token is retried with growing delays, reported, and never connected", async (t) => {
  const { orapush, sockets } = load(t, { random: 0.999999 });
  const states = [];
  const errors = [];
  let tokens = 0;
  const client = orapush.connect(null, {
    getToken: () => { tokens += 1; return Promise.resolve("bad"); },
    onStateChange: (s) => states.push(s),
    onError: (e) => errors.push({ ...e }),
  });
  client.subscribe("emp", () => {});
  const delays = [];
  for (let i = 1; i <= 5; i++) {
    const ws = sockets[i - 1];
    ws.open();
    await settle();
    assert.deepEqual(ws.sent[0], { op: "auth", token: "bad" });
    ws.frame({ type: "error", code: "unauthorized", message: "InvalidToken" });
    ws.serverClose(1008);
    if (i < 5) delays.push(waitForSocket(t, sockets, i + 1));
  }
  assert.deepEqual(delays, [500, 1000, 2000, 4000]);
  assert.ok(delays.reduce((a, b) => a + b) >= 500 + 1000 + 2000 + 4000);
  assert.equal(tokens, 5);
  // One report per refusal: the close 1008 after the error frame is not news.
  assert.deepEqual(errors, Array(5).fill({ code: "unauthorized", message: "InvalidToken" }));
  assert.ok(!states.includes("connected"), states.join(","));
});

test("an accepted token makes the client connected and resets the backoff", async (t) => {
  const { orapush, sockets } = load(t, { random: 0.999999 });
  const states = [];
  const client = orapush.connect(null, { getToken: () => "tok", onStateChange: (s) => states.push(s) });
  client.subscribe("emp", () => {});
  for (const i of [0, 1]) {
    sockets[i].open();
    await settle();
    sockets[i].frame({ type: "error", code: "unauthorized", message: "expired" });
    sockets[i].serverClose(1008);
    waitForSocket(t, sockets, i + 2);
  }
  sockets[2].open();
  await settle();
  assert.equal(client.state, "reconnecting");
  sockets[2].frame({ type: "auth", sub: "SCOTT", exp: 4102444800 });
  assert.equal(client.state, "connected");
  assert.equal(states.filter((s) => s === "connected").length, 1);
  sockets[2].serverClose(1006);
  assert.equal(waitForSocket(t, sockets, 4), 500);
});

test("without auth, the first subscribed makes the client connected", (t) => {
  const { orapush, sockets } = load(t);
  const client = orapush.connect();
  client.subscribe("emp", () => {});
  sockets[0].open();
  assert.equal(client.state, "connecting");
  sockets[0].frame(subscribed());
  assert.equal(client.state, "connected");
});

test("a socket dropped before any answer backs off further", (t) => {
  const { orapush, sockets } = load(t, { random: 0.999999 });
  const client = orapush.connect();
  client.subscribe("emp", () => {});
  sockets[0].open();
  sockets[0].serverClose(1006);
  assert.equal(waitForSocket(t, sockets, 2), 500);
  sockets[1].open();
  sockets[1].serverClose(1006);
  assert.equal(waitForSocket(t, sockets, 3), 1000);
});

test("with nothing to subscribe, a pong makes the client connected", (t) => {
  const { orapush, sockets } = load(t);
  const client = orapush.connect();
  sockets[0].open();
  assert.deepEqual(sockets[0].sent, [{ op: "ping" }]);
  sockets[0].frame({ type: "pong" });
  assert.equal(client.state, "connected");
});

test("a close 1008 or 4001 without an error frame is reported as closed", (t) => {
  const { orapush, sockets } = load(t);
  const errors = [];
  orapush.connect(null, { onError: (e) => errors.push({ ...e }) }).subscribe("emp", () => {});
  sockets[0].open();
  sockets[0].serverClose(4001);
  waitForSocket(t, sockets, 2);
  sockets[1].open();
  sockets[1].serverClose(1006);
  assert.deepEqual(errors, [{ code: "closed", closeCode: 4001, message: "" }]);
});

test("a refused channel is reported with its name, dropped, and not asked again", (t) => {
  const { orapush, sockets } = load(t);
  const errors = [];
  const client = orapush.connect(null, { onError: (e) => errors.push({ ...e }) });
  client.subscribe("emp", () => {});
  client.subscribe("secret", () => {});
  sockets[0].open();
  sockets[0].frame(subscribed("emp"));
  sockets[0].frame({ type: "error", code: "forbidden", message: 'not allowed to subscribe to "secret"' });
  assert.deepEqual(errors, [{ code: "forbidden", message: 'not allowed to subscribe to "secret"', channel: "secret" }]);
  assert.equal(client.state, "connected");
  sockets[0].serverClose(1001);
  waitForSocket(t, sockets, 2);
  sockets[1].open();
  assert.deepEqual(sockets[1].sent.map((f) => f.channel), ["emp"]);
});

test("a subscription made before the token went out follows the token", async (t) => {
  const { orapush, sockets } = load(t);
  let release;
  const client = orapush.connect(null, { getToken: () => new Promise((r) => { release = r; }) });
  sockets[0].open();
  client.subscribe("emp", () => {});
  assert.deepEqual(sockets[0].sent, []);
  release("tok");
  await settle();
  assert.deepEqual(sockets[0].sent, [{ op: "auth", token: "tok" }, { op: "subscribe", channel: "emp" }]);
});

test("a failing getToken is reported and retried with growing delays", async (t) => {
  const { orapush, sockets } = load(t, { random: 0.999999 });
  const errors = [];
  orapush.connect(null, {
    getToken: () => Promise.reject({ statusText: "session expired" }),
    onError: (e) => errors.push({ ...e }),
  });
  const delays = [];
  for (let i = 1; i <= 3; i++) {
    sockets[i - 1].open();
    await settle();
    assert.deepEqual(sockets[i - 1].sent, []);
    delays.push(waitForSocket(t, sockets, i + 1));
  }
  assert.deepEqual(delays, [500, 1000, 2000]);
  assert.deepEqual(errors, Array(3).fill({ code: "token_unavailable", message: "session expired" }));
});

test("an error frame that names its channel is reported with that channel", (t) => {
  const { orapush, sockets } = load(t);
  const errors = [];
  const client = orapush.connect(null, { onError: (e) => errors.push({ ...e }) });
  client.subscribe("a b", () => {});
  sockets[0].open();
  sockets[0].frame({ type: "error", code: "bad_request", message: "channel name has ' '", channel: "a b" });
  assert.deepEqual(errors, [{ code: "bad_request", message: "channel name has ' '", channel: "a b" }]);
  client.subscribe("a b", () => {});
  assert.deepEqual(sockets[0].sent.at(-1), { op: "subscribe", channel: "a b" });
});
