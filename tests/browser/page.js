// Drives the system's headless Chromium for a Python test, one command per
// line on stdin, one JSON answer per line on stdout:
//
//   {"op": "goto", "url": "..."}                     a fresh page at url
//   {"op": "wait", "js": "expr", "timeout": ms}       until expr is truthy
//   {"op": "eval", "js": "expr"}                      expr's value
//   {"op": "screenshot", "path": "...", "scheme"?}    the whole page as PNG
//                                                     (scheme: "light" or "dark")
//   {"op": "close"}                                   close the browser, exit
//
// Every answer is {"ok": bool, "value"?, "error"?, "console": [...]}, where
// console lists the page's errors and warnings (a CSP violation shows there)
// since the previous answer.
//
// Usage: node page.js CHROMIUM USER_DATA_DIR
"use strict";

const readline = require("node:readline");
const { chromium } = require("playwright-core");

const [executablePath, userDataDir] = process.argv.slice(2);
// Without the background-networking flags Chromium calls home at start-up
// (and waits for it); --disable-quic keeps it off UDP.
const ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-dev-shm-usage",
];

let context = null;
let page = null;
let console_ = [];

function answer(message) {
  message.console = console_;
  console_ = [];
  process.stdout.write(JSON.stringify(message) + "\n");
}

// A function, not a string: Playwright evaluates a string with eval() in
// the page, which the page's Content-Security-Policy (rightly) refuses.
function expression(js) {
  return new Function("return (" + js + ");");
}

async function run(command) {
  switch (command.op) {
    case "goto": {
      if (page) await page.close();
      page = await context.newPage();
      page.setViewportSize({ width: command.width || 1360, height: command.height || 900 });
      page.on("console", (message) => {
        if (message.type() === "error" || message.type() === "warning") {
          console_.push(message.type() + ": " + message.text());
        }
      });
      page.on("pageerror", (error) => console_.push("pageerror: " + error.message));
      const response = await page.goto(command.url, { timeout: command.timeout || 10000 });
      return { status: response ? response.status() : null };
    }
    case "wait":
      await page.waitForFunction(expression(command.js), null, {
        timeout: command.timeout || 5000,
        polling: 50,
      });
      return true;
    case "eval":
      return await page.evaluate(expression(command.js));
    case "screenshot":
      if (command.scheme) await page.emulateMedia({ colorScheme: command.scheme });
      await page.screenshot({ path: command.path, fullPage: true });
      return command.path;
    case "close":
      await context.close();
      context = null;
      return true;
    default:
      throw new Error("unknown op " + JSON.stringify(command.op));
  }
}

async function main() {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args: ARGS,
    timeout: 30000,
  });
  answer({ ok: true, value: "ready" });
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (!line.trim()) continue;
    let command;
    try {
      command = JSON.parse(line);
      answer({ ok: true, value: await run(command) });
    } catch (error) {
      answer({ ok: false, error: String(error && error.message ? error.message : error) });
    }
    if (command && command.op === "close") break;
  }
  if (context) await context.close();  // stdin closed without "close"
  process.exit(0);
}

main().catch((error) => {
  answer({ ok: false, error: "launch failed: " + String(error && error.message ? error.message : error) });
  process.exit(1);
});
