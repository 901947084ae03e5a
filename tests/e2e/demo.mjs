// The README's first command, as a person would try it: the repository's sample dist/ on the
// edge's embedded defaults, "Log in with WeChat" through the sandbox, back on the page logged in.
// Usage: EDGE=http://127.0.0.1:PORT node demo.mjs → prints one JSON line.
import { run } from './browser.mjs';

const EDGE = process.env.EDGE;
const result = {};
await run(async (browser, result) => {
  const context = await browser.newContext();
  await context.route('**/*', (route) => {
    const host = new URL(route.request().url()).hostname;
    return host === '127.0.0.1' || host === 'localhost' ? route.continue() : route.abort();
  });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  await page.goto(`${EDGE}/`);
  await page.waitForFunction(() => !document.querySelector('#who').textContent.includes('Checking'));
  result.before = await page.locator('#who').innerText();
  await page.locator('#login').click();
  await page.waitForURL(/\/_wxedge\/sandbox\/connect\/oauth2\/authorize/);
  await page.locator('a.user[data-user="snap"]').click();
  await page.waitForURL(`${EDGE}/`);
  await page.waitForFunction(() => document.querySelector('#who').textContent.includes('openid'));
  result.after = await page.locator('#who').innerText();
  await page.locator('#logout').click();
  await page.waitForFunction(() => document.querySelector('#who').textContent.includes('Not logged in'));
  result.afterLogout = await page.locator('#who').innerText();
  // The JS-SDK page: signed by the edge, checked by the sandbox's stand-in for WeChat's script.
  const settled = () => document.querySelector('#status').dataset.state !== 'signing';
  await page.goto(`${EDGE}/jssdk.html?from=share#/deep/route`);
  await page.waitForFunction(settled);
  result.jssdk = await page.locator('#status').innerText();
  // A signature for another URL than the page's: WeChat's answer is config:invalid signature.
  await page.goto(`${EDGE}/jssdk.html?sign=${encodeURIComponent(`${EDGE}/other.html`)}`);
  await page.waitForFunction(settled);
  result.jssdkWrongUrl = await page.locator('#status').innerText();
}, result);
