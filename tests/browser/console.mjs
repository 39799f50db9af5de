// Drives headless Chromium (Debian's package) through one role's main path in the console.
// Run by tests/api/console_browser.rs against a server it spawned and seeded:
//
//   node tests/browser/console.mjs user|admin|auditor
//
// Settings come from the environment (HAZINA_URL, HAZINA_USERNAME, HAZINA_PASSWORD,
// HAZINA_CANARIES: secrets no page may ever contain, one per line, HAZINA_SCREENSHOTS: the
// folder for the role's screenshot, plus each role's own, below). Every page is searched for
// the canaries, checked for the console's security headers, for labels on every control,
// for text contrast, for a phone-width layout, and for console errors. Exits 0 when every
// check passed; otherwise prints what failed and exits 1.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const role = process.argv[2];
const env = (name) => {
  const v = process.env[name];
  if (v === undefined) throw new Error(`${name} is not set`);
  return v;
};
const base = env("HAZINA_URL");
const canaries = env("HAZINA_CANARIES").split("\n").filter((c) => c.length > 0);
const shots = env("HAZINA_SCREENSHOTS");

const failures = [];
const fail = (what) => {
  failures.push(what);
  console.log(`FAIL ${what}`);
};
const check = (ok, what) => {
  if (ok) console.log(`ok   ${what}`);
  else fail(what);
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
// A phone-width screen: every page must work at 390 CSS pixels.
const context = await browser.newContext({ viewport: { width: 390, height: 844 } });
const page = await context.newPage();
page.setDefaultTimeout(15000);

const consoleErrors = [];
// Pages the path asks for knowing they answer an error (a refused form, another user's
// credential): Chromium logs "Failed to load resource" for those, and only those are fine.
const expectedErrors = new Set();
page.on("console", (m) => {
  if (m.type() !== "error") return;
  const url = m.location().url;
  if (m.text().startsWith("Failed to load resource") && expectedErrors.has(url)) return;
  consoleErrors.push(`${url || page.url()}: ${m.text()}`);
});
page.on("pageerror", (e) => consoleErrors.push(`${page.url()}: ${e.message}`));

// Every console document the browser receives: its headers and its HTML, searched.
let documents = 0;
page.on("response", async (res) => {
  if (res.request().resourceType() !== "document") return;
  const status = res.status();
  if (status >= 300 && status < 400) return;
  documents += 1;
  const headers = res.headers();
  const csp = headers["content-security-policy"] || "";
  if (!csp.includes("default-src 'none'") || !csp.includes("script-src 'self'") || csp.includes("unsafe-inline")) {
    fail(`${res.url()}: Content-Security-Policy is ${JSON.stringify(csp)}`);
  }
  if (headers["x-frame-options"] !== "DENY") fail(`${res.url()}: X-Frame-Options is ${headers["x-frame-options"]}`);
  if (!(headers["cache-control"] || "").includes("no-store")) fail(`${res.url()}: Cache-Control is ${headers["cache-control"]}`);
  let html = "";
  try {
    html = await res.text();
  } catch (e) {
    return;
  }
  for (const c of canaries) {
    if (html.includes(c)) fail(`${res.url()}: the page contains a stored secret`);
  }
});

/// Labels, contrast and layout of the page as it is now.
async function accessible(what) {
  const problems = await page.evaluate(() => {
    const out = [];
    // Every form control a person fills has a label.
    for (const el of document.querySelectorAll("input, select, textarea")) {
      if (el.type === "hidden") continue;
      const labelled =
        (el.id && document.querySelector(`label[for="${el.id}"]`)) ||
        el.closest("label") ||
        el.getAttribute("aria-label") ||
        el.getAttribute("aria-labelledby");
      if (!labelled) out.push(`a ${el.tagName.toLowerCase()} named ${el.name} has no label`);
    }
    for (const b of document.querySelectorAll("button")) {
      if (!b.textContent.trim() && !b.getAttribute("aria-label")) out.push("a button has no text");
    }
    // Text contrast (WCAG AA: 4.5:1) against the first opaque background behind it.
    const rgb = (s) => (s.match(/[\d.]+/g) || []).map(Number);
    const lum = ([r, g, b]) => {
      const f = (c) => {
        c /= 255;
        return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4);
      };
      return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
    };
    const background = (el) => {
      for (let e = el; e; e = e.parentElement) {
        const c = rgb(getComputedStyle(e).backgroundColor);
        if (c.length >= 3 && (c.length < 4 || c[3] > 0.5)) return c;
      }
      return [255, 255, 255];
    };
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    const seen = new Set();
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      const el = n.parentElement;
      if (!el || seen.has(el) || !n.textContent.trim()) continue;
      seen.add(el);
      const style = getComputedStyle(el);
      if (style.visibility === "hidden" || style.display === "none" || el.closest(".sr-only, .skip, svg")) continue;
      const box = el.getBoundingClientRect();
      if (box.width === 0 || box.height === 0) continue;
      const fg = lum(rgb(style.color));
      const bg = lum(background(el));
      const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
      if (ratio < 4.5) out.push(`low contrast (${ratio.toFixed(2)}:1) on "${n.textContent.trim().slice(0, 30)}"`);
    }
    // The page itself never scrolls sideways on a phone (wide tables scroll in their box).
    if (document.documentElement.scrollWidth > window.innerWidth + 1) {
      // Name the innermost element that sticks out (outside a scrolling box).
      let culprit = "";
      for (const el of document.body.querySelectorAll("*")) {
        if (el.closest(".scroll")) continue;
        if (el.getBoundingClientRect().right > window.innerWidth + 1) {
          culprit = `${el.tagName.toLowerCase()}${el.className ? "." + el.className : ""} "${(el.textContent || "").trim().slice(0, 40)}"`;
        }
      }
      out.push(`the page is ${document.documentElement.scrollWidth}px wide on a ${window.innerWidth}px screen (${culprit})`);
    }
    if (document.documentElement.lang !== "en") out.push("no lang on <html>");
    if (!document.querySelector("h1")) out.push("no <h1>");
    return out;
  });
  check(problems.length === 0, `${what}: accessible (${problems.join("; ") || "labels, contrast, width"})`);
}

async function shouldSee(text, what) {
  try {
    await page.getByText(text, { exact: false }).first().waitFor({ state: "visible" });
    check(true, what);
  } catch (e) {
    fail(`${what}: "${text}" is not on ${page.url()}`);
  }
}

/// Signs in with the keyboard only: the username field has focus, Tab moves to the password,
/// Enter submits.
async function signIn(username, password) {
  await page.goto(`${base}/console/`);
  check(page.url().endsWith("/console/login/"), "an unsigned visitor is sent to the sign-in page");
  await accessible("sign-in page");
  const focused = await page.evaluate(() => document.activeElement && document.activeElement.id);
  check(focused === "username", `the username field has the focus (${focused})`);
  if (focused !== "username") await page.focus("#username");
  await page.keyboard.type(username);
  await page.keyboard.press("Tab");
  await page.keyboard.type(password);
  await Promise.all([page.waitForNavigation(), page.keyboard.press("Enter")]);
}

/// The page at a phone's width (390 CSS pixels), where no table cell may lie outside the
/// screen, and at a desktop's (1280): a screenshot of each, `NAME-390.png` and `NAME-1280.png`.
async function screenshot(name = role) {
  mkdirSync(shots, { recursive: true });
  const outside = await page.evaluate(() =>
    [...document.querySelectorAll("td, th")]
      .filter((el) => {
        // A header row the phone layout hides (each cell then carries its column's name).
        const head = el.closest("thead");
        if (head && head.getBoundingClientRect().width <= 1) return false;
        const r = el.getBoundingClientRect();
        return r.width > 1 && (r.right > window.innerWidth + 1 || r.left < -1);
      })
      .map((el) => el.dataset.label || el.textContent.trim().slice(0, 24)),
  );
  check(outside.length === 0, `${name} at 390 px: every table cell on the screen (${outside.join(", ") || "all"})`);
  await page.screenshot({ path: join(shots, `${name}-390.png`), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.screenshot({ path: join(shots, `${name}-1280.png`), fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
}

async function userPath() {
  await signIn(env("HAZINA_USERNAME"), env("HAZINA_PASSWORD"));
  check(page.url().endsWith("/console/credentials/"), "a user lands on their credentials");
  await accessible("credentials page");
  const [first, second] = canaries;

  // Create a credential; its private key is the first canary.
  await page.selectOption("#provider", "kopokopo");
  await page.selectOption("#environment", "sandbox");
  await page.fill("#api_key", "console-api-key");
  await page.fill("#private_key", first);
  await Promise.all([page.waitForNavigation(), page.click("text=Store the credential")]);
  await shouldSee("The credential was stored.", "the credential is created");
  const detail = page.url().split("?")[0];
  await accessible("credential page");

  // Check the stored key, then a wrong one.
  await page.fill("#candidate", first);
  await Promise.all([page.waitForNavigation(), page.click("button:has-text('Check')")]);
  await shouldSee("Match: the key you entered is the stored private key.", "verify says the right key matches");
  await page.fill("#candidate", "not-the-key-at-all");
  await Promise.all([page.waitForNavigation(), page.click("button:has-text('Check')")]);
  await shouldSee("No match", "verify says a wrong key does not match");

  // Rotate to the second canary.
  await page.fill("#new_key", second);
  await Promise.all([page.waitForNavigation(), page.click("button:has-text('Replace')")]);
  await shouldSee("The private key was replaced", "the key is rotated");
  const version = await page.locator("dl.facts dd").nth(3).textContent();
  check(version.trim() === "2", `the current version is 2 after the rotation (${version})`);

  // Deactivate.
  await Promise.all([page.waitForNavigation(), page.click("button:has-text('Deactivate')")]);
  await shouldSee("The credential is inactive", "the credential is deactivated");

  // The access log shows what happened, with its outcomes.
  const log = await page.locator("section[aria-labelledby=log] tbody tr").count();
  check(log >= 4, `the access log lists the create, checks and rotation (${log} entries)`);
  await shouldSee("key mismatch", "the wrong key's check is in the access log as a denial");

  // A form posted without its CSRF token is refused and changes nothing.
  await page.evaluate(() => {
    const form = document.querySelector("form[action$='/toggle/']");
    form.querySelector("input[name=csrf]").remove();
  });
  expectedErrors.add(`${detail}toggle/`);
  const refused = page.waitForResponse((r) => r.url().endsWith("/toggle/"));
  await page.click("button:has-text('Activate')");
  const res = await refused;
  check(res.status() === 403, `a form without its CSRF token answers 403 (${res.status()})`);
  await shouldSee("This form has expired or did not come from this console", "the refusal says why");
  await page.goto(detail);
  await shouldSee("No service can use this credential while it is inactive", "the refused post changed nothing");
  await screenshot("user-credential");
  // The main page, with the credential listed.
  await page.goto(`${base}/console/credentials/`);
  await shouldSee("KopoKopo", "the list shows the credential");
  await screenshot();

  // Another user's credential answers as missing.
  const otherUrl = `${base}/console/credentials/${env("HAZINA_OTHER_CREDENTIAL")}/`;
  expectedErrors.add(otherUrl);
  const other = await page.goto(otherUrl);
  check(other.status() === 404, `another user's credential answers 404 (${other.status()})`);
  await shouldSee("Payment credentials not found or access denied", "as a missing one does");

  // Signing out ends the session.
  await page.goto(`${base}/console/credentials/`);
  await Promise.all([page.waitForNavigation(), page.click("button:has-text('Sign out')")]);
  await page.goto(`${base}/console/credentials/`);
  check(page.url().endsWith("/console/login/"), "after signing out, the console asks to sign in again");
}

async function adminPath() {
  await signIn(env("HAZINA_USERNAME"), env("HAZINA_PASSWORD"));
  check(page.url().endsWith("/console/admin/"), "an admin lands on the users page");
  await accessible("users page");

  const newbie = env("HAZINA_NEW_USER");
  await page.fill("#username", newbie);
  await page.fill("#password", "a-long-initial-password-1");
  await page.selectOption("#role", "user");
  await Promise.all([page.waitForNavigation(), page.click("text=Create the user")]);
  await shouldSee("The user was created.", "the user is created");
  await shouldSee(newbie, "the new user is listed");
  // A user's page: disabling asks for a tick first (the browser keeps the form until then).
  await Promise.all([page.waitForNavigation(), page.click(`a[href='/console/admin/users/${newbie}/']`)]);
  await accessible("user page");
  await page.click(`button:has-text('Disable ${newbie}')`);
  check(page.url().endsWith(`/console/admin/users/${newbie}/`), "an unticked Disable does not leave the page");
  await page.check("#confirm-disable");
  await Promise.all([page.waitForNavigation(), page.click(`button:has-text('Disable ${newbie}')`)]);
  await shouldSee("The user is disabled", "the user is disabled");
  await Promise.all([page.waitForNavigation(), page.click(`button:has-text('Lift the login lockout of ${newbie}')`)]);
  await shouldSee("No login lockout held this user", "unlock says what it found");

  await page.goto(`${base}/console/admin/services/`);
  await accessible("services page");
  await page.fill("#name", "payments-api");
  await page.fill("#identity", "spiffe://hazina.test/payments-api");
  await Promise.all([page.waitForNavigation(), page.click("text=Register the service")]);
  await shouldSee("The service was registered.", "the service is registered");

  await page.goto(`${base}/console/admin/grants/`);
  await accessible("grants page");
  await page.fill("#service", "payments-api");
  await page.fill("#owner", env("HAZINA_OWNER"));
  await page.selectOption("#provider", "mpesa");
  await page.selectOption("#environment", "sandbox");
  check(!(await page.isChecked("#op-reveal")), "use, don't reveal: reveal is not ticked by default");
  await page.check("#op-access-token");
  await Promise.all([page.waitForNavigation(), page.click("text=Make the grant")]);
  await shouldSee("The grant was made.", "the grant is made");
  const row = await page.locator("tbody tr").last().innerText();
  check(row.includes("access-token") && !row.includes("reveal"), `the grant lists access-token alone (${row})`);

  await page.goto(`${base}/console/admin/certificates/`);
  await accessible("certificates page");

  await page.goto(`${base}/console/admin/keys/`);
  await accessible("master keys page");
  await shouldSee("New data keys are wrapped under version 1", "the keys page names the active version");
  await Promise.all([page.waitForNavigation(), page.click("text=Start a master-key rotation")]);
  await shouldSee("A master-key rotation is under way", "a rotation starts");
  await shouldSee("to version 2", "its progress names the new version");
  await page.goto(`${base}/console/admin/`);
  await screenshot();
}

async function auditorPath() {
  await signIn(env("HAZINA_USERNAME"), env("HAZINA_PASSWORD"));
  check(page.url().endsWith("/console/audit/"), "an auditor lands on the audit log");
  await accessible("audit log page");
  const bars = await page.locator("figure.chart rect.reveal").count();
  check(bars === 24, `the chart has a bar of reveals for each of 24 hours (${bars})`);
  await shouldSee(`reveals (${env("HAZINA_REVEALS")})`, "the chart counts the reveals");
  await shouldSee(`denials (${env("HAZINA_DENIALS")})`, "and the denials");
  const seqs = (await page.locator("#live tbody tr td:nth-child(1)").allTextContents()).map(Number);
  check(seqs.length > 2 && seqs.every((n, i) => i === 0 || seqs[i - 1] > n), `the log lists the newest first (${seqs.slice(0, 3).join(", ")}…)`);

  // Filters: only sign-ins.
  await page.click("summary:has-text('Filters')");
  await page.fill("#f-action", "auth.login");
  await Promise.all([page.waitForNavigation(), page.click("button:has-text('Filter')")]);
  const actions = await page.locator("#live tbody tr td:nth-child(4)").allTextContents();
  check(actions.length > 0 && actions.every((a) => a === "auth.login"), `the action filter shows only logins (${actions.length})`);

  // Follow the log live: a new entry appears without reloading.
  await page.goto(`${base}/console/audit/`);
  const before = await page.locator("#live tbody tr").count();
  await page.click("#follow");
  await shouldSee("Following:", "following starts");
  await context.request.post(`${base}/users/login/`, {
    data: { username: "nobody-at-all", password: "wrong-password" },
  });
  await page.waitForFunction((n) => document.querySelectorAll("#live tbody tr").length > n, before);
  check(true, "a new entry appears while following");
  await page.click("#follow");

  // The export downloads with the session's cookie.
  const exported = await context.request.get(`${base}/console/audit/export.jsonl`);
  const lines = (await exported.text()).trim().split("\n");
  check(exported.ok() && lines.length > 5, `the export downloads (${lines.length} lines)`);
  check((exported.headers()["content-disposition"] || "").includes("attachment"), "as an attachment");

  // Verification in plain words; the latest checkpoint checks out when pasted back.
  await page.goto(`${base}/console/audit/verify/`);
  await accessible("verify page");
  await shouldSee("The log is intact", "the chain verifies");
  const note = await page.locator("section[aria-labelledby=latest] pre.note").first().textContent();
  check(note.includes("\n— "), "the latest checkpoint is a signed note");
  await page.fill("#checkpoint", note);
  await Promise.all([page.waitForNavigation(), page.click("button:has-text('Verify')")]);
  await shouldSee("The checkpoint holds", "the pasted checkpoint verifies");
  // The same note with one character of its root hash changed.
  const lines3 = note.split("\n");
  lines3[2] = (lines3[2][0] === "A" ? "B" : "A") + lines3[2].slice(1);
  await page.fill("#checkpoint", lines3.join("\n"));
  await Promise.all([page.waitForNavigation(), page.click("button:has-text('Verify')")]);
  await shouldSee("The checkpoint does not hold", "an altered checkpoint does not");
  await page.goto(`${base}/console/audit/`);
  await screenshot();
}

try {
  if (role === "user") await userPath();
  else if (role === "admin") await adminPath();
  else if (role === "auditor") await auditorPath();
  else throw new Error(`unknown role ${role}`);
} catch (e) {
  fail(`${role}: ${e.stack || e}`);
} finally {
  await browser.close();
}
check(documents > 3, `pages were checked (${documents})`);
check(consoleErrors.length === 0, `no console errors (${consoleErrors.join(" | ")})`);
process.exit(failures.length === 0 ? 0 : 1);
