// Refreshes each element with data-refresh="URL" every data-every ms (the fixtures' status);
// a session that ended sends the browser to the sign-in page, and a station that does not
// answer is shown as such rather than leaving an old status on screen.
const refreshers = [];
for (const el of document.querySelectorAll('[data-refresh]')) {
  const every = Number(el.dataset.every) || 1000;
  let timer = null;
  const tick = async () => {
    clearTimeout(timer);
    try {
      const r = await fetch(el.dataset.refresh, { cache: 'no-store', credentials: 'same-origin' });
      if (r.redirected) { location.href = '/login'; return; }
      if (r.ok) el.innerHTML = await r.text();
      el.classList.toggle('stale', !r.ok);
    } catch (e) {
      el.classList.add('stale');
    }
    timer = setTimeout(tick, every);
  };
  timer = setTimeout(tick, every);
  refreshers.push(tick);
}

// A keyboard-mode scanner types into whatever has the focus: keep it on the scan box unless
// the operator is using another field or a button.
const box = document.getElementById('scan');
if (box) {
  box.focus();
  document.addEventListener('click', (e) => {
    if (!e.target.closest('a, button, input, select, textarea')) box.focus();
  });
  // The box posts without reloading the page, so the next label a scanner types is not lost
  // while a page loads, and the status shows the outcome at once. Without this script the form
  // posts as a plain form.
  box.form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const code = box.value;
    box.value = '';
    try {
      await fetch(box.form.action, {
        method: 'POST',
        body: new URLSearchParams({ code }),
        credentials: 'same-origin',
        redirect: 'manual',
      });
    } catch (err) {
      // The refresh below shows the station as not answering.
    }
    for (const tick of refreshers) tick();
  });
}
