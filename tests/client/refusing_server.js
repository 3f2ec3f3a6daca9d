// The Node.js `ws` counterpart of refusing_server.py's "policy" mode: accept
// the upgrade, then close at once with 1008 (policy violation). Prints the
// serving line, then "attempt <seconds>" for every upgrade, so a test counts
// the attempts on the server.
//
//   NODE_PATH=tests/peers/node/node_modules node refusing_server.js --port 0
"use strict";
const { WebSocketServer } = require("ws");

const at = process.argv.indexOf("--port");
const port = at >= 0 ? Number(process.argv[at + 1]) : 0;
const wss = new WebSocketServer({ host: "127.0.0.1", port });

wss.on("headers", () => {
  const [s, ns] = process.hrtime();
  console.log(`attempt ${(s + ns / 1e9).toFixed(6)}`);
});
wss.on("connection", (ws) => ws.close(1008, "not welcome"));
wss.on("listening", () => {
  console.log(`refusing-node: serving on ws://127.0.0.1:${wss.address().port}`);
});
