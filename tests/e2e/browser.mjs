// Shared by the driver scripts: Debian's chromium, headless, with the flags this machine's closed
// network needs, and a runner that prints one JSON result line and exits non-zero on failure.
import { chromium } from 'playwright-core';

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync',
      // e.g. --ignore-certificate-errors-spki-list=<pin>: trust the HTTPS test's own certificate.
      ...(process.env.CHROMIUM_ARGS || '').split(' ').filter(Boolean)],
  });
}

// Runs `scenario(browser, result)`, then prints `result` (with ok/error) and exits.
export async function run(scenario, result = {}) {
  const browser = await launch();
  try {
    await scenario(browser, result);
    result.ok = true;
  } catch (e) {
    result.ok = false;
    result.error = String(e && e.stack ? e.stack : e);
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(result));
  process.exit(result.ok ? 0 : 1);
}
