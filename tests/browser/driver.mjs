// The shared half of the page drivers for tests/browser.rs: opens a URL in
// Debian's headless Chromium, then answers commands read on stdin, one line
// each ("ok" or "error: ..."). Every wait has a deadline; none sleeps.
// Commands every page understands (SEL is a CSS selector without spaces):
//   shows SEL S       wait until the element's text contains S
//   is SEL S          wait until the element's text is exactly S (trimmed)
//   matches SEL RE    wait until the element's text matches the regex RE
//   row SEL a|b|...   wait until a row of the table body SEL starts with these cells
//   lacks SEL S       the element's text does not contain S (checked now)
//   noerrors          no uncaught JavaScript error has happened on the page
//   screenshot P      save a PNG of the page to P
//   quit
import { chromium } from "playwright-core";
import readline from "node:readline";

export const timeout = 20000;

/** Runs the driver; `commands` maps extra command names to async (page, arg) => void. */
export async function drive(url, commands = {}) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  const page = await browser.newPage();
  const pageErrors = [];
  page.on("console", (m) => process.stderr.write(`[page] ${m.text()}\n`));
  page.on("pageerror", (e) => {
    pageErrors.push(e.message);
    process.stderr.write(`[page error] ${e.message}\n`);
  });
  await page.goto(url);

  const text = (sel) => page.locator(sel).first().textContent({ timeout });
  const waitText = (sel, test, arg) =>
    page.waitForFunction(([sel, test, arg]) => {
      const el = document.querySelector(sel);
      if (!el) return false;
      const t = el.textContent;
      if (test === "shows") return t.includes(arg);
      if (test === "is") return t.trim() === arg;
      return new RegExp(arg).test(t);
    }, [sel, test, arg], { timeout });
  const builtin = {
    shows: (p, sel, arg) => waitText(sel, "shows", arg),
    is: (p, sel, arg) => waitText(sel, "is", arg),
    matches: (p, sel, arg) => waitText(sel, "matches", arg),
    row: (p, sel, arg) =>
      page.waitForFunction(([sel, cells]) => Array.from(document.querySelectorAll(sel + " tr")).some((tr) =>
        cells.every((c, i) => tr.cells[i] && tr.cells[i].textContent.trim() === c)),
      [sel, arg.split("|")], { timeout }),
    lacks: async (p, sel, arg) => {
      const t = await text(sel);
      if (t.includes(arg)) throw new Error(`${sel} shows ${JSON.stringify(arg)}: ${JSON.stringify(t)}`);
    },
  };

  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    const [cmd, ...rest] = line.trim().split(" ");
    const arg = rest.join(" ");
    try {
      if (cmd === "quit") break;
      if (builtin[cmd]) {
        const [sel, ...more] = rest;
        await builtin[cmd](page, sel, more.join(" "));
      } else if (commands[cmd]) {
        await commands[cmd](page, arg);
      } else if (cmd === "noerrors") {
        if (pageErrors.length) throw new Error(`page errors: ${pageErrors.join("; ")}`);
      } else if (cmd === "screenshot") {
        await page.screenshot({ path: arg, fullPage: true });
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
}
