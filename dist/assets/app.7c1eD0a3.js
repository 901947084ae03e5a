// Sample front-end: asks the edge who is logged in. A real uni-app build never needs this.
const who = document.getElementById('who');
fetch('/_wxedge/session', { credentials: 'same-origin' })
  .then((r) => (r.ok ? r.json() : Promise.reject(new Error('HTTP ' + r.status))))
  .then((s) => {
    if (s.authenticated) {
      who.textContent = 'Logged in as openid ' + s.openid + (s.snapshot ? ' (snapshot user: tap 使用完整服务)' : '');
    } else {
      who.textContent = 'Not logged in.';
    }
  })
  .catch((e) => {
    who.textContent = 'Session check unavailable: ' + e.message;
  });
