// Refreshes each element with data-refresh="URL" every data-every ms (the fixtures' status);
// a session that ended sends the browser to the sign-in page, and a station that does not
// answer is shown as such rather than leaving an old status on screen.
for (const el of document.querySelectorAll('[data-refresh]')) {
  const every = Number(el.dataset.every) || 1000;
  const tick = async () => {
    try {
      const r = await fetch(el.dataset.refresh, { cache: 'no-store', credentials: 'same-origin' });
      if (r.redirected) { location.href = '/login'; return; }
      if (r.ok) el.innerHTML = await r.text();
      el.classList.toggle('stale', !r.ok);
    } catch (e) {
      el.classList.add('stale');
    }
    setTimeout(tick, every);
  };
  setTimeout(tick, every);
}

// A keyboard-mode scanner types into whatever has the focus: keep it on the scan box unless
// the operator is using another field or a button.
const box = document.getElementById('scan');
if (box) {
  box.focus();
  document.addEventListener('click', (e) => {
    if (!e.target.closest('a, button, input, select, textarea')) box.focus();
  });
}
