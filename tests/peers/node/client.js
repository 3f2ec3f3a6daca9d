// An independent peer for the driver tests: the Node.js `ws` client.
//
//   node client.js URL CHANNEL SECONDS [--origin ORIGIN]
//
// Connects, subscribes to CHANNEL, publishes one message to it, answers
// pings (ws does that by itself), and after SECONDS closes with 1000.
// Every event is one JSON line on stdout, so the test can wait on them:
//   {"event":"open"} {"event":"message","data":...} {"event":"ping"}
//   {"event":"close","code":1000,"reason":""} {"event":"error","message":...}
"use strict";
const WebSocket = require("ws");

const [url, channel, seconds] = process.argv.slice(2, 5);
const originAt = process.argv.indexOf("--origin");
const options = originAt > 0 ? { origin: process.argv[originAt + 1] } : {};
const say = (record) => process.stdout.write(JSON.stringify(record) + "\n");

const ws = new WebSocket(url, options);
ws.on("open", () => {
  say({ event: "open" });
  ws.send(JSON.stringify({ type: "subscribe", channel }));
  ws.send(JSON.stringify({ type: "publish", channel, data: { from: "node" } }));
  setTimeout(() => ws.close(1000, "done"), Number(seconds) * 1000);
});
ws.on("message", (data, isBinary) => {
  say({ event: "message", data: isBinary ? data.toString("hex") : data.toString() });
});
ws.on("ping", () => say({ event: "ping" }));
ws.on("unexpected-response", (req, res) => {
  say({ event: "unexpected-response", status: res.statusCode });
  process.exit(3);
});
ws.on("close", (code, reason) => {
  say({ event: "close", code, reason: reason.toString() });
  process.exit(0);
});
ws.on("error", (err) => say({ event: "error", message: err.message }));
