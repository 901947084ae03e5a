// The unchanged uni-app build, in real headless Chromium, through the real edge.
// The page navigates to the real https://open.weixin.qq.com/... URL; the browser's request
// routing sends that one host to the edge's sandbox WeChat (the page itself is not changed).
// Every other non-loopback request is aborted: nothing leaves the machine.
//
// Usage: EDGE=http://127.0.0.1:PORT PHONE=13800138000 node flow.mjs  → prints one JSON line.
import { run } from './browser.mjs';

const EDGE = process.env.EDGE;
const PHONE = process.env.PHONE || '13800138000';
const USER = process.env.WX_USER || 'alice';
const result = { steps: [], wechatRedirects: 0 };
const step = (s) => result.steps.push(s);

await run(async (browser, result) => {
  const context = await browser.newContext({ userAgent: 'Mozilla/5.0 (Linux; Android 14) MicroMessenger/8.0.50 wxedge-e2e' });
  await context.route('**/*', async (route) => {
    const url = new URL(route.request().url());
    if (url.hostname === 'open.weixin.qq.com') {
      // WeChat's authorize page → the sandbox's, same query (the #wechat_redirect fragment is client-side).
      result.wechatRedirects += 1;
      result.authorizeQuery = url.search;
      return route.fulfill({ status: 302, headers: { location: `${EDGE}/_wxedge/sandbox${url.pathname}${url.search}` } });
    }
    if (url.hostname !== '127.0.0.1' && url.hostname !== 'localhost') {
      return route.abort();
    }
    return route.continue();
  });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);

  // 1. Open the site: the landing page asks /api/wx/config and goes to WeChat.
  await page.goto(`${EDGE}/`);
  await page.waitForURL(/\/_wxedge\/sandbox\/connect\/oauth2\/authorize/);
  step('authorize');
  const userLink = page.locator(`a.user[data-user="${USER}"]`);
  result.sandboxUserText = await userLink.innerText();
  await userLink.click();

  // 2. Callback on the page with ?code=… → the page posts it to /api/wx/login → not bound → login page.
  await page.waitForURL(/\/pages\/login\/login/);
  step('login-page');
  await page.locator('#phone input').fill(PHONE);
  await page.locator('#bind').click();

  // 3. Bound → home shows phone and openid (from the backend, which trusts only the edge's header).
  await page.waitForURL(/\/pages\/index\/index/);
  await page.waitForFunction(() => document.querySelector('#me-openid')?.textContent?.trim().length > 0);
  result.first = {
    phone: (await page.locator('#me-phone').innerText()).trim(),
    openid: (await page.locator('#me-openid').innerText()).trim(),
  };
  step('home');
  result.cookies = (await context.cookies()).map((c) => ({ name: c.name, httpOnly: c.httpOnly, sameSite: c.sameSite, secure: c.secure }));

  // 4. The same user opens / again: bound → home.
  await page.goto(`${EDGE}/`);
  await page.waitForURL(/\/_wxedge\/sandbox\/connect\/oauth2\/authorize/);
  await page.locator(`a.user[data-user="${USER}"]`).click();
  await page.waitForURL(/\/pages\/index\/index/);
  await page.waitForFunction(() => document.querySelector('#me-openid')?.textContent?.trim().length > 0);
  result.second = {
    phone: (await page.locator('#me-phone').innerText()).trim(),
    openid: (await page.locator('#me-openid').innerText()).trim(),
  };
  step('home-again');
  await page.screenshot({ path: process.env.SCREENSHOT || '/tmp/wxedge-e2e-home.png' });
}, result);
