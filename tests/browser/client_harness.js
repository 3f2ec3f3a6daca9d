// The page of tests/browser/test_client_browser.py (served by tests/browser/site.py):
// starts the browser client and records every event it emits, in order,
// with the wall-clock time, and every frame it sends, for the test to read.
"use strict";

const TYPES = ["message", "drift", "reconnect", "statechange", "stop", "frame"];

window.events = [];
// Messages as heard through the client's EventTarget side (the events above
// come through the callbacks): both must tell the same story.
window.listened = [];
// What the client sent: { socket: 1, 2, ... (the connection), data }.
window.sent = [];
window.sockets = 0;
// A function to run once, from the next reconnect event (the client is
// between two connections then).
window.onNextReconnect = null;

// The client looks WebSocket up on the global object when it connects.
window.WebSocket = class extends WebSocket {
  constructor(...args) {
    super(...args);
    this.number = ++window.sockets;
  }
  send(data) {
    window.sent.push({ socket: this.number, data });
    super.send(data);
  }
};

// The details of one event type, in order; the times they came.
window.kinds = (type) => window.events.filter((e) => e.type === type).map((e) => e.detail);
window.times = (type) => window.events.filter((e) => e.type === type).map((e) => e.at);
// The JSON frames the client sent of one type: [{ socket, frame }].
window.sentOf = (type) =>
  window.sent
    .filter((s) => typeof s.data === "string" && s.data.startsWith("{"))
    .map((s) => ({ socket: s.socket, frame: JSON.parse(s.data) }))
    .filter((s) => s.frame.type === type);

window.start = async (moduleUrl, url, options = {}) => {
  const { connect } = await import(moduleUrl);
  const callbacks = {};
  for (const type of TYPES) {
    callbacks["on" + type] = (detail) => window.events.push({ type, at: Date.now(), detail });
  }
  const record = callbacks.onreconnect;
  callbacks.onreconnect = (detail) => {
    record(detail);
    const next = window.onNextReconnect;
    window.onNextReconnect = null;
    if (next) next();
  };
  window.client = connect(url, { ...options, ...callbacks });
  window.client.addEventListener("message", (event) => window.listened.push(event.detail));
  return window.client.state;
};
