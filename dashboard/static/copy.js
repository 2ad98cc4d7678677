// Copy buttons: `<button data-copy="value" hidden>` shows only where this script runs; without it
// the full value is still in the element's title and, selectable, in the expanded details.
(function () {
  "use strict";

  function reveal(root) {
    root.querySelectorAll("button[data-copy][hidden]").forEach(function (button) {
      button.hidden = false;
    });
  }

  // Outside a secure context (plain http to a host name) the Clipboard API is missing.
  function copyWithSelection(text) {
    var field = document.createElement("textarea");
    field.value = text;
    field.setAttribute("readonly", "");
    field.className = "copy-buffer";
    document.body.appendChild(field);
    field.select();
    var copied = document.execCommand("copy");
    field.remove();
    return copied ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }

  function copy(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).catch(function () {
        return copyWithSelection(text);
      });
    }
    return copyWithSelection(text);
  }

  document.addEventListener("click", function (click) {
    var button = click.target.closest("button[data-copy]");
    if (!button) return;
    copy(button.dataset.copy).then(
      function () { button.textContent = "Copied"; },
      function () { button.textContent = "Not copied: select it in the details"; }
    );
    setTimeout(function () { button.textContent = "Copy"; }, 3000);
  });
  document.addEventListener("DOMContentLoaded", function () { reveal(document); });
  // Rows htmx swaps in (another page, new filters) get their buttons too.
  document.addEventListener("htmx:load", function (loaded) { reveal(loaded.target); });
})();
