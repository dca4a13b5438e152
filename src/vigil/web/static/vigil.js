/* vigil web UI: the page's behaviour.
 *
 * - Every change is a call of the REST API itself (the CLI's endpoints), sent with the
 *   session's CSRF token; the answer (summary, or the API's refusal with its problems) is
 *   shown in the page's live regions.
 * - Live: an EventSource on /ui/live; a "change" (with the digest of what is shown) or an
 *   "events" notice makes htmx ask again for the fragments that listen for it.
 * - Actions on an instance: a menu (button, right-click, or the context-menu key / Shift+F10
 *   on a cell), navigable with the arrow keys, Escape closes it.
 * - The extend wizard fills each resource's fields with the target's proposed values.
 */
(function () {
  "use strict";

  const MASK = "********";
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  const role = () => document.body.dataset.role || "";
  const canOperate = () => role() === "operator" || role() === "administrator";
  const canAdminister = () => role() === "administrator";

  // --- messages -----------------------------------------------------------------------
  function show(text, problems, isError, working) {
    const region = document.getElementById(isError ? "alerts" : "messages");
    const other = document.getElementById(isError ? "messages" : "alerts");
    if (!region) return;
    other.replaceChildren();
    const box = document.createElement("div");
    box.className = isError ? "message error" : working ? "message working" : "message ok";
    const p = document.createElement("p");
    p.textContent = text;
    box.appendChild(p);
    if (problems && problems.length > 1) {
      const ul = document.createElement("ul");
      for (const problem of problems) {
        const li = document.createElement("li");
        li.textContent = problem;
        ul.appendChild(li);
      }
      box.appendChild(ul);
    }
    const close = document.createElement("button");
    close.type = "button";
    close.className = "link";
    close.textContent = "Dismiss";
    close.addEventListener("click", () => box.remove());
    box.appendChild(close);
    region.replaceChildren(box);
  }

  async function api(method, path, body) {
    const headers = { "x-csrf-token": csrf(), accept: "application/json" };
    const init = { method, headers, credentials: "same-origin" };
    if (body !== undefined && method !== "GET" && method !== "DELETE") {
      headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let answer;
    try {
      answer = await fetch(path, init);
    } catch (err) {
      return { ok: false, status: 0, data: { error: "the agent did not answer: " + err } };
    }
    let data = null;
    try {
      data = await answer.json();
    } catch (err) {
      data = { error: answer.status + " " + answer.statusText };
    }
    return { ok: answer.ok, status: answer.status, data };
  }

  function reportAnswer(answer) {
    const d = answer.data || {};
    if (answer.ok) {
      const text = [d.summary, d.detail].filter(Boolean).join(": ") || "Done.";
      show(text, [], false);
    } else {
      const prefix = answer.status === 401 || answer.status === 403 ? "Not allowed: " : "Refused: ";
      show(prefix + (d.error || d.detail || "HTTP " + answer.status), d.problems || [], true);
      if (answer.status === 401) setTimeout(() => (location.href = "/ui/login"), 1500);
    }
  }

  // --- confirmation -------------------------------------------------------------------
  function confirmFirst(text) {
    const dialog = document.getElementById("confirm-dialog");
    if (!dialog || !text) return Promise.resolve(true);
    document.getElementById("confirm-text").textContent = text;
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.returnValue = "";
      dialog.showModal();
      document.getElementById("confirm-ok").focus();
    });
  }

  // --- forms -> JSON ------------------------------------------------------------------
  function rawValue(input) {
    return input.type === "checkbox" ? (input.checked ? "true" : "false") : input.value;
  }

  function typed(input) {
    const kind = input.dataset.kind || "text";
    const raw = rawValue(input);
    const label = (input.labels && input.labels[0] ? input.labels[0].textContent : input.name).trim();
    if (kind === "bool") return input.checked;
    if (raw.trim() === "") return null;
    if (kind === "int" || kind === "float") {
      const n = Number(raw);
      if (!Number.isFinite(n) || (kind === "int" && !Number.isInteger(n))) {
        throw new Error(label + ": " + JSON.stringify(raw) + " is not a number");
      }
      return n;
    }
    if (kind === "lines") return raw.split("\n").map((l) => l.trim()).filter(Boolean);
    if (kind === "json") {
      try {
        return JSON.parse(raw);
      } catch (err) {
        throw new Error(label + ": not valid JSON (" + err.message + ")");
      }
    }
    return raw;
  }

  function formRequest(form) {
    const body = form.dataset.body ? JSON.parse(form.dataset.body) : {};
    const query = new URLSearchParams();
    const changedOnly = form.dataset.changedOnly === "yes";
    let path = form.dataset.path || "";
    for (const input of form.querySelectorAll("input[name], select[name], textarea[name]")) {
      if (input.disabled || input.type === "hidden" && !input.dataset.kind) continue;
      if (form.dataset.pathFrom === input.name) {
        path = input.value;
        continue;
      }
      if (input.dataset.skip === "yes") continue;
      if (input.dataset.secret === "yes" && input.value === MASK) continue;
      const initial = input.dataset.initial;
      if (changedOnly && initial !== undefined && rawValue(input) === initial) continue;
      let value = typed(input);
      if (input.dataset.query === "yes") {
        if (value !== null && value !== false) query.set(input.name, String(value));
        continue;
      }
      if (value === null) {
        // emptied: removes the value where the API allows it (properties, policies)
        if (!(changedOnly && initial)) continue;
      }
      let target = body;
      for (const part of (input.dataset.in || "").split("/").filter(Boolean)) {
        target[part] = target[part] || {};
        target = target[part];
      }
      target[input.name] = value;
    }
    const qs = query.toString();
    return { method: form.dataset.method || "POST", path: qs ? path + "?" + qs : path, body };
  }

  async function submitApiForm(form) {
    let request;
    try {
      request = formRequest(form);
    } catch (err) {
      show("Not sent: " + err.message, [], true);
      return;
    }
    if (!(await confirmFirst(form.dataset.confirm))) return;
    const button = form.querySelector('button[type="submit"]');
    if (button) button.disabled = true;
    form.setAttribute("aria-busy", "true");
    show("Working: " + request.method + " " + request.path + " (waits for the agents)…", [], false, true);
    const answer = await api(request.method, request.path, request.body);
    form.removeAttribute("aria-busy");
    if (button) button.disabled = false;
    reportAnswer(answer);
    if (answer.ok && form.dataset.then) {
      const target = form.dataset.then.replace(/\{(\w+)\}/g, (_, k) => encodeURIComponent(request.body[k] || ""));
      setTimeout(() => (location.href = target), 600);
    } else if (answer.ok) {
      refresh("vigil-change");
    }
  }

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form.matches("form.api")) {
      event.preventDefault();
      submitApiForm(form);
    } else if (form.matches("form.api-get")) {
      event.preventDefault();
      apiGetForm(form);
    }
  });

  // --- live ---------------------------------------------------------------------------
  function refresh(name) {
    if (window.htmx) window.htmx.trigger(document.body, name);
  }

  function connectLive() {
    if (!role() || !window.EventSource) return;
    const state = document.getElementById("live-state");
    const source = new EventSource("/ui/live");
    source.addEventListener("open", () => state && (state.textContent = "live"));
    source.addEventListener("error", () => state && (state.textContent = "reconnecting…"));
    source.addEventListener("change", (event) => {
      if (event.data !== document.body.dataset.digest) {
        document.body.dataset.digest = event.data;
        refresh("vigil-change");
      }
    });
    source.addEventListener("events", () => refresh("vigil-events"));
    source.addEventListener("expired", () => {
      source.close();
      location.href = "/ui/login";
    });
  }

  // --- the instance menu (the seed's right-click) ---------------------------------------
  const menu = () => document.getElementById("menu");
  let menuOpener = null;

  function menuItems(cell) {
    const h = cell.dataset.hierarchy, tag = cell.dataset.tag, server = cell.dataset.server;
    const inService = cell.dataset.state === "ISP" || cell.dataset.state === "ISU";
    const base = "/v1/hierarchies/" + encodeURIComponent(h);
    const items = [];
    if (canOperate() && !(inService && cell.dataset.active === "yes")) {
      items.push({ label: "Bring " + h + " in service on " + server, method: "POST", path: base + "/in-service", body: { server } });
    }
    if (canOperate() && inService) {
      items.push({ label: "Take " + h + " out of service", method: "POST", path: base + "/out-of-service", body: {}, confirm: "Take " + h + " out of service on every server?" });
    }
    if (canAdminister()) {
      items.push({ label: "Extend " + h + "…", href: "/ui/hierarchies/" + encodeURIComponent(h) + "/extend" });
      items.push({ label: "Unextend " + h + " from " + server, method: "POST", path: base + "/unextend", body: { server }, confirm: "Unextend " + h + " from " + server + "? Its resources there are deleted." });
      items.push({ label: "Delete " + h + "…", method: "DELETE", path: base, confirm: "Delete the hierarchy " + h + " from every server? This cannot be undone." });
    }
    items.push({ label: "Properties of " + tag, href: "/ui/resources/" + encodeURIComponent(tag) });
    items.push({ label: "Why is " + h + " where it is?", href: "/ui/hierarchies/" + encodeURIComponent(h) + "#why-h" });
    return items;
  }

  function openMenu(cell, opener, x, y) {
    const box = menu();
    box.replaceChildren();
    box.setAttribute("aria-label", "Actions for " + cell.dataset.tag + " on " + cell.dataset.server);
    for (const item of menuItems(cell)) {
      const entry = document.createElement("button");
      entry.type = "button";
      entry.setAttribute("role", "menuitem");
      entry.tabIndex = -1;
      entry.textContent = item.label;
      entry.addEventListener("click", async () => {
        closeMenu();
        if (item.href) {
          location.href = item.href;
          return;
        }
        if (!(await confirmFirst(item.confirm))) return;
        show("Working: " + item.label + "…", [], false, true);
        const answer = await api(item.method, item.path, item.body);
        reportAnswer(answer);
        if (answer.ok && item.method === "DELETE") setTimeout(() => (location.href = "/ui/"), 600);
      });
      box.appendChild(entry);
    }
    menuOpener = opener || cell;
    const rect = (opener || cell).getBoundingClientRect();
    box.style.left = (x !== undefined ? x : rect.left) + window.scrollX + "px";
    box.style.top = (y !== undefined ? y : rect.bottom) + window.scrollY + "px";
    box.hidden = false;
    if (opener) opener.setAttribute("aria-expanded", "true");
    box.firstChild && box.firstChild.focus();
  }

  function closeMenu(restoreFocus) {
    const box = menu();
    if (!box || box.hidden) return;
    box.hidden = true;
    if (menuOpener) {
      menuOpener.removeAttribute("aria-expanded");
      if (restoreFocus && document.body.contains(menuOpener)) menuOpener.focus();
    }
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest(".menu-button");
    if (button) {
      event.preventDefault();
      openMenu(button.closest(".cell"), button);
    } else if (!event.target.closest("#menu")) {
      closeMenu(false);
    }
  });
  document.addEventListener("contextmenu", (event) => {
    const cell = event.target.closest("td.cell[data-tag]");
    if (cell && canOperate()) {
      event.preventDefault();
      openMenu(cell, cell.querySelector(".menu-button"), event.clientX, event.clientY);
    }
  });
  document.addEventListener("keydown", (event) => {
    const box = menu();
    if (box && !box.hidden && box.contains(document.activeElement)) {
      const items = [...box.querySelectorAll('[role="menuitem"]')];
      const at = items.indexOf(document.activeElement);
      const moves = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: items.length - 1 };
      if (event.key in moves) {
        event.preventDefault();
        items[(moves[event.key] + items.length) % items.length].focus();
      } else if (event.key === "Escape" || event.key === "Tab") {
        event.preventDefault();
        closeMenu(true);
      }
      return;
    }
    const cell = event.target.closest && event.target.closest("td.cell[data-tag]");
    if (cell && canOperate() && (event.key === "ContextMenu" || (event.shiftKey && event.key === "F10"))) {
      event.preventDefault();
      openMenu(cell, cell.querySelector(".menu-button"));
    }
  });

  // --- the extend wizard: the target's proposed values ---------------------------------
  async function preview(form, server) {
    const problems = document.getElementById("extend-problems");
    problems.replaceChildren();
    if (!server) return;
    problems.textContent = "Asking " + server + " for its proposed values…";
    const answer = await api("GET", form.dataset.preview + "?server=" + encodeURIComponent(server));
    problems.replaceChildren();
    if (!answer.ok) {
      reportAnswer(answer);
      return;
    }
    const priority = document.getElementById("extend-priority");
    priority.placeholder = String(answer.data.priority);
    const found = [];
    for (const [tag, info] of Object.entries(answer.data.resources)) {
      const fieldset = form.querySelector('fieldset[data-resource="' + CSS.escape(tag) + '"]');
      for (const [name, value] of Object.entries(info.values || {})) {
        const input = fieldset && fieldset.querySelector('[name="' + CSS.escape(name) + '"]');
        if (!input) continue;
        const shown = Array.isArray(value) && input.dataset.kind === "lines" ? value.join("\n")
          : typeof value === "object" && value !== null ? JSON.stringify(value) : String(value);
        if (input.type === "checkbox") input.checked = value === true;
        else input.value = shown;
        input.dataset.initial = rawValue(input);
      }
      found.push(...(info.problems || []));
    }
    if (found.length) {
      const title = document.createElement("p");
      title.textContent = "The pre-extend checks on " + server + " found:";
      const ul = document.createElement("ul");
      for (const problem of found) {
        const li = document.createElement("li");
        li.textContent = problem;
        ul.appendChild(li);
      }
      problems.append(title, ul);
    } else {
      problems.textContent = "The pre-extend checks on " + server + " found no problem.";
    }
  }

  document.addEventListener("change", (event) => {
    if (event.target.id === "extend-server") preview(event.target.form, event.target.value);
  });

  // --- read-only API views (the mail page) ---------------------------------------------
  function list(items, text) {
    const ul = document.createElement("ul");
    for (const item of items) {
      const li = document.createElement("li");
      li.textContent = text(item);
      ul.appendChild(li);
    }
    return ul;
  }

  const shows = {
    "failed-users": (d) => {
      const p = document.createElement("p");
      const users = d.users || [];
      p.textContent = users.length ? users.length + " users on " + d.server + ":" : "None (read on " + (d.server || "no server") + ").";
      return users.length ? [p, list(users, (u) => typeof u === "string" ? u : JSON.stringify(u))] : [p];
    },
    services: (d) => {
      const out = [];
      for (const [server, services] of Object.entries(d)) {
        const p = document.createElement("p");
        p.textContent = server + ": " + (services.length ? services.map((s) => s.name).join(", ") : "none");
        out.push(p);
      }
      return out.length ? out : [document.createTextNode("None.")];
    },
  };

  async function loadApiViews() {
    for (const box of document.querySelectorAll("[data-api-get]")) {
      const answer = await api("GET", box.dataset.apiGet);
      if (!answer.ok) {
        box.textContent = "Refused: " + ((answer.data && answer.data.error) || answer.status);
        continue;
      }
      box.replaceChildren(...(shows[box.dataset.show] || ((d) => [document.createTextNode(JSON.stringify(d))]))(answer.data));
    }
  }

  async function apiGetForm(form) {
    const params = new URLSearchParams(new FormData(form));
    const answer = await api("GET", form.dataset.path + "?" + params.toString());
    const target = document.getElementById(form.dataset.target);
    if (!answer.ok) {
      reportAnswer(answer);
      target.textContent = "";
      return;
    }
    target.textContent = Object.entries(answer.data).map(([k, v]) => k + ": " + v).join(" · ");
  }

  document.addEventListener("DOMContentLoaded", () => {
    connectLive();
    loadApiViews();
    document.body.addEventListener("htmx:responseError", (event) => {
      show("Could not refresh: HTTP " + event.detail.xhr.status, [], true);
    });
  });
})();
