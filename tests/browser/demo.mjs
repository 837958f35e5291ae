// Drives the orapush demo page (GET /) for tests/browser.rs.
// Usage: node demo.mjs URL; commands on stdin, see driver.mjs. Besides those:
//   subscribed N   wait until the page has N confirmed subscriptions
//   text S         wait until the message list shows S
import { drive, timeout } from "./driver.mjs";

await drive(process.argv[2], {
  subscribed: (page, n) => page.waitForFunction(
    (n) => Number(document.body.getAttribute("data-subscribed-count") || 0) >= n, Number(n), { timeout }),
  text: (page, s) => page.waitForFunction(
    (s) => document.getElementById("messages").textContent.includes(s), s, { timeout }),
});
