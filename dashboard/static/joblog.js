// The Job page's log: keep it scrolled to its newest line while the reader is at the bottom,
// leave it where it is once they scroll up to read, and follow again when they come back down.
(function () {
  "use strict";
  var log = document.getElementById("job-log");
  if (!log) {
    return;
  }
  var SLACK = 24; // pixels from the bottom that still count as "at the bottom"
  var following = true;

  function atBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight <= SLACK;
  }

  function toBottom() {
    log.scrollTop = log.scrollHeight;
  }

  log.addEventListener("scroll", function () {
    following = atBottom();
  });
  // htmx puts new lines in the log; whatever put them there, follow them if the reader does.
  new MutationObserver(function () {
    if (following) {
      toBottom();
    }
  }).observe(log, { childList: true });
  toBottom();
})();
