// Drives Debian's chromium through the operator web UI of a running `station serve`, as an
// operator does, and prints what the pages showed as one JSON line. The Rust test
// (tests/tests/web_ui.rs) sets up the station and checks both this output and the database.
//
// Environment: STATION_URL; SUPERVISOR, SUPERVISOR_PASSWORD, PRODUCT, LOT (the supervisor opens
// the lot first); WEB_USER, WEB_PASSWORD (from the environment, never an argument), WEB_BADGE,
// FIXTURE, SERIAL (a unit on the fixture's link), SEARCH (what finds it on /units), BAD_SCAN
// (not a serial).
'use strict';
const { env, launch, report } = require('./browser');

report('operator-ui', async () => {
  const url = env('STATION_URL').replace(/\/$/, '');
  const fixture = env('FIXTURE');
  const out = {};
  const browser = await launch();
  try {
    const page = await browser.newPage();
    page.setDefaultTimeout(60000);

    // Not signed in: the line sends the browser to the sign-in page.
    await page.goto(`${url}/`);
    out.unsignedPath = new URL(page.url()).pathname;

    // The supervisor opens the lot, then signs out.
    await page.fill('#user', env('SUPERVISOR'));
    await page.fill('#password', env('SUPERVISOR_PASSWORD'));
    await page.press('#password', 'Enter');
    await page.waitForSelector('#board');
    await page.click('text=Lots');
    await page.selectOption('#product', env('PRODUCT'));
    await page.fill('#quantity', '50');
    await page.fill('#lot-id', env('LOT'));
    await page.click('#open-lot');
    await page.waitForSelector('#flash');
    out.lotOpened = (await page.textContent('#flash')).trim();
    await page.click('text=Sign out');
    await page.waitForSelector('#badge');

    // A wrong password is refused with a clear message.
    await page.fill('#user', env('WEB_USER'));
    await page.fill('#password', 'not-the-password');
    await page.press('#password', 'Enter');
    await page.waitForSelector('#error');
    out.wrongPassword = (await page.textContent('#error')).trim();

    // A badge scanned into the badge box (a keyboard-mode scanner types it and Enter).
    await page.fill('#badge', `OP:${env('WEB_BADGE')}`);
    await page.press('#badge', 'Enter');
    await page.waitForSelector(`#fixture-${fixture}`);
    out.signedInAs = (await page.textContent('#user')).trim();

    // The fixture's page: the scan box has the focus.
    await page.click(`#fixture-${fixture}`);
    await page.waitForSelector('#scan');
    out.scanFocused = await page.evaluate(() => document.activeElement && document.activeElement.id === 'scan');

    // Something that is not a serial of this product: refused, with what was read. The box
    // posts without a page load (a marker on the page survives), is emptied and keeps the focus.
    await page.evaluate(() => { window.stationMarker = 1; });
    await page.keyboard.type(env('BAD_SCAN'));
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => /REFUSED/.test(document.querySelector('#banner').textContent));
    out.refused = (await page.textContent('#banner')).trim().replace(/\s+/g, ' ');
    out.stayedOnPage = await page.evaluate(() => window.stationMarker === 1
      && document.activeElement.id === 'scan' && document.activeElement.value === '');

    // The unit's serial, typed as a scanner types it: the banner shows it running, then PASS
    // (the status refreshes by itself).
    await page.waitForSelector('#scan');
    await page.keyboard.type(env('SERIAL'));
    await page.keyboard.press('Enter');
    await page.waitForFunction(
      () => /PASS|FAIL/.test(document.querySelector('#banner').textContent),
      null, { timeout: 90000 });
    out.outcome = (await page.textContent('#banner')).trim().replace(/\s+/g, ' ');
    out.recent = (await page.innerText('#recent')).trim().replace(/\s+/g, ' ');

    // The unit's page, through the link under the banner.
    await page.click(`a[href^="/units/"]`);
    await page.waitForSelector('#steps');
    out.unitState = (await page.textContent('#state')).trim();
    out.unitOperator = (await page.textContent('#operator')).trim();
    out.unitSteps = await page.$$eval('#steps tr', (rows) => rows.length - 1);

    // The units list finds it by what someone tracing it from the cloud side has: its
    // registration ID, in the case DPS happens to show it.
    await page.goto(`${url}/units`);
    await page.fill('#q', env('SEARCH'));
    await page.press('#q', 'Enter');
    await page.waitForSelector('#steps');
    out.foundBySearch = new URL(page.url()).pathname;

    // Lots show the unit counted.
    await page.goto(`${url}/lots`);
    out.lots = (await page.textContent('main')).replace(/\s+/g, ' ').trim();

    // Signing out ends the session: the line sends the browser to sign in again.
    await page.click('text=Sign out');
    await page.waitForSelector('#badge');
    await page.goto(`${url}/`);
    out.afterSignOutPath = new URL(page.url()).pathname;
  } finally {
    await browser.close();
  }
  return out;
});
