// Drives the orapush demo page in Debian's headless Chromium for
// tests/browser.rs. Usage: node demo.mjs URL
// Reads commands on stdin, answers one line each ("ok" or "error: ...").
//   subscribed N   wait until the page has N confirmed subscriptions
//   text S         wait until the message list shows S
//   screenshot P   save a PNG of the page to P
//   quit
import { chromium } from "playwright-core";
import readline from "node:readline";

const url = process.argv[2];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const page = await browser.newPage();
page.on("console", (m) => process.stderr.write(`[page] ${m.text()}\n`));
await page.goto(url);

const timeout = 20000;
const commands = readline.createInterface({ input: process.stdin });
for await (const line of commands) {
  const [cmd, ...rest] = line.trim().split(" ");
  const arg = rest.join(" ");
  try {
    if (cmd === "subscribed") {
      await page.waitForFunction(
        (n) => Number(document.body.getAttribute("data-subscribed-count") || 0) >= n,
        Number(arg), { timeout });
    } else if (cmd === "text") {
      await page.waitForFunction(
        (t) => document.getElementById("messages").textContent.includes(t), arg, { timeout });
    } else if (cmd === "screenshot") {
      await page.screenshot({ path: arg, fullPage: true });
    } else if (cmd === "quit") {
      break;
    } else {
      throw new Error(`unknown command ${cmd}`);
    }
    console.log("ok");
  } catch (e) {
    console.log(`error: ${String(e.message || e).split("\n")[0]}`);
  }
}
await browser.close();
process.exit(0);
