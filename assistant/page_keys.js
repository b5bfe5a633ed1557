// The page's keys. Each presses the button or option it names, so a key does exactly what
// a click does (and the server checks it the same way).
//
// Chat: Esc stops the answer that is streaming (Send is off while one streams).
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape") return;
  const send = document.querySelector("#send");
  const chat = document.querySelector("#chat-column");
  if (chat && chat.offsetParent && send && send.disabled) {
    document.querySelector("#stop")?.click();
    event.preventDefault();
    event.stopImmediatePropagation();
  }
});

// Curate > Review queue with the keyboard alone (the help line under the queue lists them):
//   j / k   the next / previous answer        1 - 5   score it
//   e       edit the correction (Esc leaves)  s       save, and open the next answer
document.addEventListener("keydown", (event) => {
  // The queue's Load button says the review tab is on screen. Not the table: Gradio mounts
  // it only once a queue has loaded, a moment after the count above it shows.
  const load = document.querySelector("#load-queue");
  if (!load || !load.offsetParent) return;
  const typing = "textarea, select, [contenteditable], " +
                 "input:not([type=radio]):not([type=checkbox]):not([type=button])";
  if (event.target.closest(typing)) {
    if (event.key === "Escape") event.target.blur();
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const press = (selector) => {
    const element = document.querySelector(selector);
    if (element && !element.disabled) element.click();
    return Boolean(element);
  };
  let done = false;
  if (event.key === "j") done = press("#review-next");
  else if (event.key === "k") done = press("#review-previous");
  else if (event.key === "s") done = press("#save-review");
  else if (event.key === "e") {
    const box = document.querySelector("#correction textarea");
    if (box) { box.focus(); done = true; }
  } else if (/^[1-5]$/.test(event.key)) {
    const options = document.querySelectorAll("#score label");
    if (options.length >= Number(event.key)) {
      options[Number(event.key) - 1].click();
      done = true;
    }
  }
  if (done) event.preventDefault();
});
