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

// The page's hidden boxes are how this script asks the server for something (a rename, a
// version of an answer, a rating): it writes the ask into the box and fires the input event
// Gradio listens for, which runs the box's change handler on the server.
function tellPage(selector, value) {
  const box = document.querySelector(`${selector} textarea`);
  box.value = value;
  box.dispatchEvent(new Event("input", {bubbles: true}));
}
// The server goes away (a restart, a crash): say so over the page, check /healthz every few
// seconds, and reload the page once it answers (the open conversation comes back through the
// browser's storage). What was typed in the message box is kept across the reload.
const DRAFT = "flywheel-draft";
document.addEventListener("input", (event) => {
  if (event.target.closest("#message textarea")) sessionStorage.setItem(DRAFT, event.target.value);
});
const restoreDraft = new MutationObserver(() => {
  const box = document.querySelector("#message textarea");
  if (!box) return;
  restoreDraft.disconnect();
  const draft = sessionStorage.getItem(DRAFT);
  if (draft && !box.value) tellPage("#message", draft);  // Gradio reads the box's events
  setInterval(keepDraft, 500);
});
restoreDraft.observe(document.documentElement, {childList: true, subtree: true});
// The box is the draft: the page empties it once a message is sent and keeps it when a send
// is refused (busy, rate limited), neither of which fires an input event; so the stored draft
// follows the box's value rather than the keys that sent it.
function keepDraft() {
  const box = document.querySelector("#message textarea");
  if (!box) return;
  if (box.value) sessionStorage.setItem(DRAFT, box.value);
  else sessionStorage.removeItem(DRAFT);
}
// What each stored answer shows, from the page's hidden #answer-details box: ‹ 2/3 › on an
// answer before the last that has other versions (Gradio draws its options on the last answer
// alone), and for curators and admins the version that wrote it as the hover title. A click
// on ‹ or › writes "<answer's place>:<step>" into the hidden #answer-move box for the page.
function askForVersion(event, place, step) {
  event.stopPropagation();  // not also a click on the message (which selects it)
  // The time: the same click twice is two asks.
  tellPage("#answer-move", `${place}:${step}:${Date.now()}`);
}
function versionsBar(place, at, of) {
  const bar = document.createElement("div");
  bar.className = "answer-versions-bar";
  for (const [label, name, step] of [["‹", "Previous version of this answer", -1],
                                     [`${at}/${of}`, null, 0],
                                     ["›", "Next version of this answer", 1]]) {
    const part = document.createElement(step ? "button" : "span");
    part.textContent = label;
    if (step) {
      part.setAttribute("aria-label", name);
      part.addEventListener("click", (event) => askForVersion(event, place, step));
    }
    bar.append(part);
  }
  return bar;
}
setInterval(() => {
  const source = document.querySelector("#answer-details textarea");
  if (!source) return;
  let details = [];
  try {
    details = JSON.parse(source.value || "[]");
  } catch (error) {
    return;
  }
  const answers = document.querySelectorAll("#chatbot [data-testid='bot']");
  answers.forEach((answer, i) => {
    const detail = details[i] || {};
    if (detail.version) answer.setAttribute("title", `Answered by ${detail.version}`);
    else answer.removeAttribute("title");
    const wanted = detail.of > 1 && i < answers.length - 1 ? `${i}:${detail.at}/${detail.of}` : "";
    const bar = answer.querySelector(":scope > .answer-versions-bar");
    if ((bar?.dataset.shows || "") === wanted) return;
    bar?.remove();
    if (wanted) {
      const drawn = versionsBar(i, detail.at, detail.of);
      drawn.dataset.shows = wanted;
      answer.append(drawn);
    }
  });
}, 500);
// Rename in place: double-click a conversation's title in the list (or press F2 on it), type,
// Enter saves and Esc leaves it as it was. The page renames it through its hidden
// #rename-request box.
function renameInPlace(label) {
  const choice = label.querySelector("input[type=radio]");
  const title = label.querySelector("span");
  if (!choice || !title || label.querySelector(".rename-in-place")) return;
  const editor = document.createElement("input");
  editor.className = "rename-in-place";
  editor.value = title.textContent.trim();
  editor.setAttribute("aria-label", "New title of this conversation");
  title.hidden = true;
  label.append(editor);
  editor.focus();
  editor.select();
  let finished = false;
  const finish = (save) => {
    if (finished) return;
    finished = true;
    const wanted = editor.value.trim();
    editor.remove();
    title.hidden = false;
    if (save && wanted && wanted !== title.textContent.trim()) {
      tellPage("#rename-request", `${choice.value}\t${Date.now()}\t${wanted}`);
    }
  };
  editor.addEventListener("keydown", (event) => {
    event.stopPropagation();  // not the page's own keys (Esc stops an answer)
    if (event.key === "Enter" || event.key === "Escape") {
      event.preventDefault();
      finish(event.key === "Enter");
    }
  });
  editor.addEventListener("click", (event) => event.preventDefault());  // not the radio
  editor.addEventListener("blur", () => finish(false));
}
document.addEventListener("dblclick", (event) => {
  const label = event.target.closest("#conversations label");
  if (label) renameInPlace(label);
});
document.addEventListener("keydown", (event) => {
  const label = event.key === "F2" && event.target.closest("#conversations label");
  if (label) {
    event.preventDefault();
    renameInPlace(label);
  }
});
// A 👍 or 👎 on an answer opens "why?" right under it: the reasons for that thumb as chips,
// and a comment. The click itself saves the thumb, as before; Save sends the rest through the
// page's hidden #rating-request box, and the form then shows what the page answered.
function answerOf(button) {  // the answer these buttons belong to: the last one above them
  let place = -1;
  document.querySelectorAll("#chatbot [data-testid='bot']").forEach((answer, i) => {
    if (answer.compareDocumentPosition(button) & Node.DOCUMENT_POSITION_FOLLOWING) place = i;
  });
  return place;
}
function askWhy(answer, place, rating) {
  document.querySelectorAll("#chatbot .answer-why").forEach((form) => form.remove());
  const form = document.createElement("div");
  form.className = "answer-why";
  form.setAttribute("role", "group");
  form.setAttribute("aria-label", "Why this rating? (optional)");
  form.addEventListener("click", (event) => event.stopPropagation());  // not the message's
  form.addEventListener("keydown", (event) => event.stopPropagation());  // not the page's keys
  form.append("Why?");
  for (const reason of (window.FLYWHEEL_REASONS || {})[rating] || []) {
    const chip = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = reason;
    chip.append(box, ` ${reason}`);
    form.append(chip);
  }
  const comment = document.createElement("input");
  comment.type = "text";
  comment.placeholder = "Comment (optional)";
  comment.setAttribute("aria-label", "Comment (optional)");
  const save = document.createElement("button");
  save.textContent = "Save";
  save.addEventListener("click", () => {
    const at = Date.now();
    tellPage("#rating-request", JSON.stringify({
      place, rating, comment: comment.value, at,
      reasons: [...form.querySelectorAll("input:checked")].map((chosen) => chosen.value)}));
    form.replaceChildren("Saving…");
    let waited = 0;
    const answered = setInterval(() => {  // the page's reply to this ask, once it comes
      const [tag, ...reply] = (document.querySelector("#rating-reply textarea")?.value || "")
        .split("\t");
      if (tag === String(at) || ++waited > 100) {
        clearInterval(answered);
        form.replaceChildren(tag === String(at) ? reply.join("\t") : "No answer from the page.");
      }
    }, 200);
  });
  const close = document.createElement("button");
  close.textContent = "✕";
  close.setAttribute("aria-label", "Close without reasons");
  close.addEventListener("click", () => form.remove());
  form.append(comment, save, close);
  answer.after(form);
}
document.addEventListener("click", (event) => {
  const thumb = event.target.closest(
    "#chatbot button[aria-label='Like'], #chatbot button[aria-label='Dislike']");
  if (!thumb) return;
  const place = answerOf(thumb);
  const answer = document.querySelectorAll("#chatbot [data-testid='bot']")[place];
  if (answer) askWhy(answer, place, thumb.getAttribute("aria-label") === "Like" ? "up" : "down");
}, true);  // before Gradio's own handler turns "Like" into "Liked"
let serverGone = false;
setInterval(async () => {
  let up = false;
  try {
    up = (await fetch("/healthz", {cache: "no-store"})).ok;
  } catch (error) { /* no answer: still gone */ }
  if (!up && !serverGone) {
    serverGone = true;
    const banner = document.createElement("div");
    banner.id = "server-gone";
    banner.setAttribute("role", "status");
    banner.textContent = "The server is not answering. This page reconnects by itself " +
                         "when it is back; what you typed is kept.";
    banner.style.cssText = "position:fixed;top:0;left:0;right:0;z-index:1000;padding:8px;" +
                           "text-align:center;background:#7c2d12;color:white;";
    document.body.appendChild(banner);
  } else if (up && serverGone) {
    location.reload();
  }
}, 3000);
