// Drives the orapush status page (GET /status) for tests/browser.rs.
// Usage: node status.mjs URL; commands on stdin, see driver.mjs. Besides those:
//   polls N   wait until the page has shown N answers of GET /api/status
import { drive, timeout } from "./driver.mjs";

await drive(process.argv[2], {
  polls: (page, n) => page.waitForFunction(
    (n) => Number(document.body.getAttribute("data-polls") || 0) >= n, Number(n), { timeout }),
});
