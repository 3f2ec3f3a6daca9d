// The Node.js `ws` server that tests/bench/compare.py measures beside wslifecycle.
//
//   node ws_server.js --port 0 --interval-ms 1000
//
// Liveness is the pattern of the ws README ("How to detect and close broken
// connections?"): ONE shared setInterval pings every client and terminates
// the ones whose pong from the previous round has not come back. Messages:
// the subset of wslifecycle's relay protocol the benchmark uses
// (subscribe -> subscribed; publish -> one broadcast to the channel's
// members, then published); anything else is echoed unchanged.
//
// A lag probe, the same in every benchmarked server: a 10 ms timer measures
// how late it fires; once a second one line "LAG <us>,<us>,..." on stdout.
"use strict";
const { WebSocketServer } = require("ws");

const argv = process.argv.slice(2);
const option = (name, fallback) => {
  const at = argv.indexOf(name);
  return at >= 0 ? argv[at + 1] : fallback;
};
const port = Number(option("--port", "0"));
const intervalMs = Number(option("--interval-ms", "30000"));
// 1 MiB and ws' 16,384 frames a message unless a scenario raises them
// (Autobahn's 16 MiB messages and 65,536-frame ones).
const maxPayload = Number(option("--max-payload", String(1024 * 1024)));
const maxFragments = Number(option("--max-fragments", String(16 * 1024)));

const wss = new WebSocketServer({
  host: "127.0.0.1",
  port,
  backlog: 1024,
  perMessageDeflate: false,
  maxPayload,
  maxFragments,
});
const channels = new Map();

function heartbeat() {
  this.isAlive = true;
}

wss.on("connection", (ws) => {
  ws.isAlive = true;
  ws.joined = new Set();
  ws.on("error", () => {});
  ws.on("pong", heartbeat);
  ws.on("message", (data, isBinary) => {
    if (!isBinary && data.length > 0 && data[0] === 0x7b) {
      let request = null;
      try {
        request = JSON.parse(data.toString());
      } catch (_) {
        request = null;
      }
      if (request && typeof request.channel === "string") {
        const channel = request.channel;
        if (request.type === "subscribe") {
          if (!channels.has(channel)) channels.set(channel, new Set());
          channels.get(channel).add(ws);
          ws.joined.add(channel);
          ws.send(JSON.stringify({ type: "subscribed", channel }));
          return;
        }
        if (request.type === "publish") {
          const members = channels.get(channel) || new Set();
          const message = JSON.stringify({ type: "message", channel, data: request.data });
          let receivers = 0;
          for (const member of members) {
            if (member.readyState === 1) {
              member.send(message);
              receivers += 1;
            }
          }
          ws.send(JSON.stringify({ type: "published", channel, receivers }));
          return;
        }
      }
    }
    ws.send(data, { binary: isBinary });
  });
  ws.on("close", () => {
    for (const channel of ws.joined) {
      const members = channels.get(channel);
      if (members) members.delete(ws);
    }
  });
});

const interval = setInterval(function ping() {
  wss.clients.forEach(function each(ws) {
    if (ws.isAlive === false) return ws.terminate();
    ws.isAlive = false;
    ws.ping();
  });
}, intervalMs);

wss.on("close", () => clearInterval(interval));
wss.on("listening", () => {
  console.log(`ws: serving on ws://127.0.0.1:${wss.address().port}`);
});

// The lag probe.
const PERIOD_NS = 10_000_000n;
let samples = [];
let last = process.hrtime.bigint();
let reportAt = last + 1_000_000_000n;
setTimeout(function probe() {
  const now = process.hrtime.bigint();
  const late = now - last - PERIOD_NS;
  samples.push(late > 0n ? Number(late / 1000n) : 0);
  last = now;
  if (now >= reportAt) {
    process.stdout.write(`LAG ${samples.join(",")}\n`);
    samples = [];
    reportAt = now + 1_000_000_000n;
  }
  setTimeout(probe, 10);
}, 10);

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => process.exit(0));
}
