// Drives Debian's chromium through Abort and Retry on a fixture's page: an operator signs in
// with a password, starts a slow unit from the scan box, aborts it while it runs, then retries
// it to PASS. Prints what the banner showed at each step as one JSON line for the Rust test
// (tests/tests/web_ui.rs), which checks the database.
//
// Environment: STATION_URL, WEB_USER, WEB_PASSWORD, FIXTURE, SERIAL.
'use strict';
const { env, launch, report } = require('./browser');

const banner = async (page) => (await page.textContent('#banner')).trim().replace(/\s+/g, ' ');
const bannerMatches = (page, pattern) => page.waitForFunction(
  (p) => new RegExp(p).test(document.querySelector('#banner').textContent), pattern,
  { timeout: 90000 });
// Presses a button (its form reloads the page), then waits for an outcome newer than the one
// on the banner before: the old FAIL still shows while a retried unit runs.
const pressAndWaitForOutcome = async (page, button, pattern) => {
  const before = await page.getAttribute('#banner', 'data-seq');
  await Promise.all([page.waitForNavigation(), page.click(button)]);
  await page.waitForFunction(
    ([s, p]) => {
      const b = document.querySelector('#banner');
      return b && b.dataset.seq !== s && new RegExp(p).test(b.textContent);
    },
    [before, pattern], { timeout: 90000 });
};

report('abort-retry', async () => {
  const url = env('STATION_URL').replace(/\/$/, '');
  const out = {};
  const browser = await launch();
  try {
    const page = await browser.newPage();
    page.setDefaultTimeout(60000);
    await page.goto(`${url}/login`);
    await page.fill('#user', env('WEB_USER'));
    await page.fill('#password', env('WEB_PASSWORD'));
    await page.press('#password', 'Enter');
    await page.waitForSelector('#board');
    await page.goto(`${url}/fixtures/${env('FIXTURE')}`);
    await page.waitForSelector('#scan');

    // The unit answers slowly: it is still running when Abort is pressed.
    await page.keyboard.type(env('SERIAL'));
    await page.keyboard.press('Enter');
    await bannerMatches(page, 'RUNNING');
    out.running = await banner(page);
    await pressAndWaitForOutcome(page, '#abort', 'FAIL');
    out.aborted = await banner(page);

    // Retry runs the failed unit again, to PASS.
    await pressAndWaitForOutcome(page, '#retry', 'PASS|FAIL');
    out.retried = await banner(page);
    out.recent = (await page.innerText('#recent')).trim().replace(/\s+/g, ' ');
  } finally {
    await browser.close();
  }
  return out;
});
