// A user logs in on a target site through the login relay, in real headless Chromium. The sites
// have their own names (auth.localhost, shop.localhost, camp.localhost), which Chromium resolves to
// loopback by itself; anything else off the machine is aborted.
//
// MODE=edge: the repository's sample site on TARGET, "Log in with WeChat" (the edge-started
// login, which goes through the relay), the sandbox WeChat on RELAY, back on TARGET logged in.
// MODE=frontend: the unchanged uni-app on TARGET builds the real WeChat URL itself; the one-line
// change of its base to `${RELAY}/_wxedge/relay/authorize` is made here by request routing.
//
// Usage: RELAY=http://auth.localhost:P TARGET=http://shop.localhost:Q MODE=edge node relay.mjs → one JSON line.
import { run } from './browser.mjs';

const { RELAY, TARGET, MODE } = process.env;
const USER = process.env.WX_USER || 'alice';
const result = { mode: MODE, navigations: [] };

await run(async (browser, result) => {
  const context = await browser.newContext({ userAgent: 'Mozilla/5.0 (Linux; Android 14) MicroMessenger/8.0.50 wxedge-e2e' });
  await context.route('**/*', async (route) => {
    const url = new URL(route.request().url());
    if (url.hostname === 'open.weixin.qq.com' && MODE === 'frontend') {
      return route.fulfill({ status: 302, headers: { location: `${RELAY}/_wxedge/relay/authorize${url.search}` } });
    }
    if (url.hostname.endsWith('.localhost')) {
      return route.continue();
    }
    return route.abort();
  });
  context.on('request', (r) => {
    if (r.isNavigationRequest()) result.navigations.push(r.url());
  });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);

  await page.goto(`${TARGET}/`);
  if (MODE === 'edge') {
    await page.waitForFunction(() => !document.querySelector('#who').textContent.includes('Checking'));
    result.before = await page.locator('#who').innerText();
    await page.locator('#login').click();
  }
  // WeChat's authorize page, on the relay's domain only.
  await page.waitForURL((u) => u.origin === RELAY && u.pathname === '/_wxedge/sandbox/connect/oauth2/authorize');
  await page.locator(`a.user[data-user="${USER}"]`).click();
  if (MODE === 'edge') {
    await page.waitForURL(`${TARGET}/`);
    await page.waitForFunction(() => document.querySelector('#who').textContent.includes('openid'));
    result.after = await page.locator('#who').innerText();
  } else {
    // The page got ?code= back, its backend got the verified openid: not bound yet → login page.
    await page.waitForURL((u) => u.origin === TARGET && u.pathname.startsWith('/pages/login/login'));
  }
  result.session = await page.evaluate(async () => (await fetch('/_wxedge/session')).json());
  result.cookies = (await context.cookies()).map((c) => ({ name: c.name, domain: c.domain }));
}, result);
