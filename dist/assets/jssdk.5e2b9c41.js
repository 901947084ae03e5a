// Sample: sign this page's URL for wx.config at the edge, then report wx.ready or wx.error.
const status = document.getElementById('status');
const show = (state, text) => {
  status.dataset.state = state;
  status.textContent = text;
};
// iOS WeChat checks the signature against the URL the page was loaded with when a router
// changes the address with history.pushState; Android against the current one. Remember it now.
const landing = location.href.split('#')[0];
const pageUrl = () => (/iPhone|iPad|iPod/i.test(navigator.userAgent) ? landing : location.href.split('#')[0]);

// The sandbox's stand-in script is on the page; with the real WeChat, load WeChat's own.
const sdk = window.wx
  ? Promise.resolve(window.wx)
  : new Promise((resolve, reject) => {
      const s = document.createElement('script');
      s.src = 'https://res.wx.qq.com/open/js/jweixin-1.6.0.js';
      s.onload = () => resolve(window.wx);
      s.onerror = () => reject(new Error('cannot load the JS-SDK'));
      document.head.appendChild(s);
    });

// Call again after every route change (a single-page app's URL changes without a reload).
async function configure(wx, url) {
  const r = await fetch('/_wxedge/jssdk/config?url=' + encodeURIComponent(url), { credentials: 'same-origin' });
  const c = await r.json();
  if (!r.ok) throw new Error(c.message || 'HTTP ' + r.status);
  wx.config({
    debug: false,
    appId: c.appId,
    timestamp: c.timestamp,
    nonceStr: c.nonceStr,
    signature: c.signature,
    jsApiList: ['updateAppMessageShareData', 'updateTimelineShareData'],
  });
}

sdk
  .then((wx) => {
    wx.ready(() => show('ready', 'wx.ready: signed for ' + pageUrl()));
    wx.error((e) => show('error', 'wx.error: ' + e.errMsg));
    // `?sign=<another URL of this site>` signs that one instead, to see WeChat refuse it.
    const other = new URLSearchParams(location.search).get('sign');
    return configure(wx, other || pageUrl());
  })
  .catch((e) => show('unsigned', 'No signature: ' + e.message));
