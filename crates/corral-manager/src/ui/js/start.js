// Corral web UI, part 5: start the page's script and the live stream.
//
// The page lists what it shows each time the stream says `ready` (on the first connection and
// after every reconnect), then applies each `change` message: nothing is missed in between, since
// the server subscribes to the store before it says `ready`.
'use strict';

function startLiveStream(page) {
  let stream = null;
  const open = () => {
    stream = new EventSource('/v1/watch');
    stream.addEventListener('ready', () => {
      connectionUp();
      Promise.resolve(page.load()).catch((e) => connectionDown(e.message));
    });
    stream.addEventListener('change', (event) => {
      try {
        page.change(JSON.parse(event.data));
      } catch (e) {
        console.warn('cannot apply a change', e);
      }
    });
    stream.addEventListener('error', () => {
      connectionDown('the live stream is interrupted');
      // A closed stream (the server answered with an error) is not retried by the browser.
      if (stream.readyState === EventSource.CLOSED) setTimeout(open, 2000);
    });
  };
  open();
  // A page kept for the back button must not hold its stream: the browser allows few connections
  // per server, and kept pages' streams would starve the next page's API calls.
  window.addEventListener('pagehide', () => stream.close());
  window.addEventListener('pageshow', (event) => {
    if (event.persisted) open();
  });
}

document.addEventListener('DOMContentLoaded', () => {
  const main = $('#main');
  const page = Corral.pages[main.dataset.page];
  if (!page) return;
  if (page.init) page.init();
  startLiveStream(page);
});
