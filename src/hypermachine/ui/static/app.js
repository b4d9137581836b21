// The HyperMachine web console: a single-page app on the server's own API.
// Every view has a URL under /ui; the key lives in this tab's sessionStorage only.
// Live state comes from the SSE event stream (read with fetch, which can send the
// key); consoles open their websocket with a single-use token (websockets cannot
// carry an Authorization header).

const VENDOR = "/ui/static/vendor";
const KEY = "hm-api-key";
const main = document.getElementById("main");
const session = { open: false, admin: false };

// -- the API ---------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || { code: "HTTP_" + status, message: String(status), details: {} };
    super(error.message);
    this.status = status;
    this.code = error.code;
    this.details = error.details || {};
  }
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY);
  return key ? { Authorization: "Bearer " + key } : {};
}

async function api(method, path, body, signal) {
  const options = { method, headers: authHeaders(), signal };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const text = await response.text();
  const data = text && (response.headers.get("Content-Type") || "").includes("json") ? JSON.parse(text) : text;
  if (!response.ok) {
    if (response.status === 401 && !session.open && location.pathname !== "/ui/sign-in") {
      signOut("Your key was refused; sign in again.");
    }
    throw new ApiError(response.status, data);
  }
  return data;
}

// Server-sent events over fetch; resumes after the last id if the stream drops.
async function follow(path, onEvent, signal) {
  let after = null;
  while (!signal.aborted) {
    const url = after === null ? path : path + (path.includes("?") ? "&" : "?") + "after=" + after;
    try {
      const response = await fetch(url, { headers: authHeaders(), signal });
      if (!response.ok) throw new ApiError(response.status, null);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replaceAll("\r\n", "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const message = parseSse(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (message.data === undefined) continue;
          if (message.id !== undefined) after = message.id;
          onEvent(message.event, JSON.parse(message.data));
        }
      }
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError && err.status === 401) return;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000)); // reconnect backoff
  }
}

function parseSse(block) {
  const message = {};
  for (const line of block.split("\n")) {
    const colon = line.indexOf(":");
    if (colon <= 0) continue;
    const field = line.slice(0, colon);
    const value = line.slice(colon + 1).replace(/^ /, "");
    message[field] = field === "data" && message.data !== undefined ? message.data + "\n" + value : value;
  }
  return message;
}

// -- small DOM helpers -----------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined && child !== false) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
  return node;
}

function notify(text, error = false) {
  const toast = h("div", { class: error ? "toast error" : "toast" }, text);
  document.getElementById("notice").append(toast);
  setTimeout(() => toast.remove(), 6000);
}

function confirmAction(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  dialog.returnValue = "";
  dialog.showModal();
  document.getElementById("confirm-ok").focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

function stateBadge(state) {
  return h("span", { class: "state", dataset: { state } }, state);
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function table(columns, rows, attrs = {}) {
  return h("table", attrs,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows));
}

// -- routing ---------------------------------------------------------------------

const routes = [
  [/^\/ui\/?$/, vmsView],
  [/^\/ui\/vms\/([A-Za-z0-9._-]+)$/, vmView],
  [/^\/ui\/host$/, hostView],
  [/^\/ui\/keys$/, keysView],
  [/^\/ui\/audit$/, auditView],
  [/^\/ui\/sign-in$/, signInView],
];
let current = null; // the AbortController of the view on screen

function navigate(path, replace = false) {
  if (replace) history.replaceState(null, "", path);
  else history.pushState(null, "", path);
  render();
}

async function render() {
  if (current) current.abort();
  current = new AbortController();
  const path = location.pathname;
  if (!session.open && !sessionStorage.getItem(KEY) && path !== "/ui/sign-in") {
    sessionStorage.setItem("hm-next", path);
    return navigate("/ui/sign-in", true);
  }
  document.getElementById("nav").hidden = path === "/ui/sign-in";
  for (const link of document.querySelectorAll("nav a")) {
    const here = link.getAttribute("href") === path || (link.getAttribute("href") === "/ui" && path.startsWith("/ui/vms"));
    if (here) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  main.replaceChildren();
  for (const [pattern, view] of routes) {
    const match = path.match(pattern);
    if (match) {
      try {
        await view(current.signal, ...match.slice(1));
      } catch (err) {
        if (!current.signal.aborted) main.append(h("p", { class: "form-error", role: "alert" }, err.message));
      }
      return;
    }
  }
  main.append(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "/ui", "data-link": true }, "Back to the VMs")));
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-link]");
  if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
  event.preventDefault();
  navigate(link.getAttribute("href"));
});
window.addEventListener("popstate", render);

// -- sign-in ---------------------------------------------------------------------

function signOut(message) {
  sessionStorage.removeItem(KEY);
  session.admin = false;
  navigate("/ui/sign-in");
  if (message) notify(message, true);
}

async function whoAmI() {
  try {
    await api("GET", "/api/v1/keys");
    session.admin = true;
  } catch {
    session.admin = false;
  }
  for (const link of document.querySelectorAll("[data-admin]")) link.hidden = !session.admin;
  document.getElementById("sign-out").hidden = session.open;
}

async function signInView() {
  const key = h("input", { type: "password", id: "api-key", name: "key", autocomplete: "off", required: true, size: 40 });
  const error = h("p", { class: "form-error", id: "sign-in-error", role: "alert" });
  const form = h("form", { class: "card", id: "sign-in", onsubmit: async (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, key.value.trim());
    try {
      await api("GET", "/api/v1/vms?limit=1");
    } catch (err) {
      sessionStorage.removeItem(KEY);
      error.textContent = err.status === 401 ? "That key is not valid." : err.message;
      return;
    }
    await whoAmI();
    const next = sessionStorage.getItem("hm-next");
    sessionStorage.removeItem("hm-next");
    navigate(next && next !== "/ui/sign-in" ? next : "/ui", true);
  } },
  h("h1", {}, "Sign in"),
  h("p", { class: "muted" }, "Paste an API key (hm_…). It is kept in this browser tab only."),
  h("div", { class: "row" }, h("label", { for: "api-key" }, "API key"), key,
    h("button", { class: "primary", type: "submit" }, "Sign in")),
  error);
  main.append(h("section", { class: "card" }, form));
  key.focus();
}

// -- VM actions, shared by the list and the VM page ------------------------------

const ACTIONS = {
  start: ["stopped", "error"],
  stop: ["running", "paused", "starting"],
  pause: ["running"],
  resume: ["paused"],
  reboot: ["running"],
  delete: null, // any state
};
const DESTRUCTIVE = { stop: "Stop", reboot: "Reboot (hard reset)", delete: "Delete" };

function actionButtons(vm) {
  return Object.entries(ACTIONS)
    .filter(([, states]) => states === null || states.includes(vm.state))
    .map(([verb]) => h("button", {
      type: "button",
      class: verb in DESTRUCTIVE ? "danger" : "",
      dataset: { action: verb },
      "aria-label": `${verb} ${vm.name}`,
      onclick: () => runAction(vm, verb),
    }, verb));
}

async function runAction(vm, verb) {
  if (verb in DESTRUCTIVE && !(await confirmAction(`${DESTRUCTIVE[verb]} the VM ${vm.name}?`))) return;
  try {
    if (verb === "delete") await api("DELETE", `/api/v1/vms/${vm.id}`);
    else await api("POST", `/api/v1/vms/${vm.id}/${verb}`, {});
    notify(`${verb}: ${vm.name}`);
  } catch (err) {
    notify(`${verb} ${vm.name}: ${err.message}`, true);
  }
}

// -- the VM list -----------------------------------------------------------------

async function vmsView(signal) {
  const vms = new Map();
  const filters = {
    state: h("select", { id: "filter-state", "aria-label": "Filter by state" },
      h("option", { value: "" }, "any state"),
      ["running", "stopped", "paused", "starting", "stopping", "creating", "error"].map((s) => h("option", { value: s }, s))),
    name: h("input", { id: "filter-name", type: "search", placeholder: "name contains", "aria-label": "Filter by name" }),
    label: h("input", { id: "filter-label", type: "search", placeholder: "label key=value", "aria-label": "Filter by label" }),
  };
  const body = h("tbody", { id: "vm-rows" });
  const empty = h("p", { class: "muted", id: "no-vms" }, "No VMs yet.");
  const draw = () => {
    const [labelKey, labelValue] = filters.label.value.split("=", 2).map((s) => s.trim());
    const shown = [...vms.values()]
      .filter((vm) => !filters.state.value || vm.state === filters.state.value)
      .filter((vm) => vm.name.includes(filters.name.value.trim()))
      .filter((vm) => !labelKey || (labelKey in vm.labels && (labelValue === undefined || vm.labels[labelKey] === labelValue)))
      .sort((a, b) => a.name.localeCompare(b.name));
    body.replaceChildren(...shown.map(vmRow));
    empty.hidden = shown.length > 0;
  };
  for (const input of Object.values(filters)) input.addEventListener("input", draw);

  main.append(
    h("h1", {}, "Virtual machines"),
    h("div", { class: "filters" }, filters.state, filters.name, filters.label),
    h("section", { class: "card" },
      table(["Name", "State", "CPUs", "Memory", "Image", "Labels", "Actions"], [], { class: "vms" }),
      empty),
    await createForm(signal),
  );
  main.querySelector("table.vms tbody").replaceWith(body);

  const listed = await api("GET", "/api/v1/vms?limit=500", undefined, signal);
  for (const vm of listed.vms) vms.set(vm.id, vm);
  draw();
  body.dataset.loaded = "true";
  follow("/api/v1/events", async (type, event) => {
    if (!event.vm_id) return;
    if (type === "vm.deleted") {
      vms.delete(event.vm_id);
      return draw();
    }
    try {
      vms.set(event.vm_id, await api("GET", `/api/v1/vms/${event.vm_id}`, undefined, signal));
    } catch (err) {
      if (err.status === 404) vms.delete(event.vm_id);
    }
    draw();
  }, signal);
}

function vmRow(vm) {
  const labels = Object.entries(vm.labels).map(([k, v]) => `${k}=${v}`).join(", ");
  return h("tr", { dataset: { vmId: vm.id, vmName: vm.name } },
    h("td", { "data-label": "Name" }, h("a", { href: `/ui/vms/${vm.id}`, "data-link": true }, vm.name)),
    h("td", { "data-label": "State" }, stateBadge(vm.state)),
    h("td", { "data-label": "CPUs" }, vm.cpus),
    h("td", { "data-label": "Memory" }, `${vm.memory_mb} MB`),
    h("td", { "data-label": "Image" }, vm.image),
    h("td", { "data-label": "Labels" }, labels),
    h("td", {}, h("div", { class: "actions" }, actionButtons(vm))));
}

// -- the create form -------------------------------------------------------------

const FIELDS = [
  ["name", "Name", { required: true, placeholder: "web-1" }],
  ["image", "Image", null],
  ["cpus", "CPUs", { type: "number", value: "1" }],
  ["memory_mb", "Memory (MB)", { type: "number", value: "512" }],
  ["disk_gb", "Disk (GB)", { type: "number", value: "1" }],
  ["labels", "Labels (key=value, …)", { placeholder: "team=web, env=dev" }],
  ["network", "Network", null],
];

async function createForm(signal) {
  const images = await api("GET", "/api/v1/images", undefined, signal);
  const inputs = {};
  const errors = {};
  const formError = h("p", { class: "form-error", id: "create-error", role: "alert" });
  const controls = FIELDS.map(([name, title, attrs]) => {
    let input;
    if (name === "image") {
      input = h("select", { id: "vm-image", name }, images.images.map((i) =>
        h("option", { value: i.name }, i.available ? i.name : `${i.name} (downloads on first use)`)));
    } else if (name === "network") {
      input = h("select", { id: "vm-network", name }, ["nat", "none"].map((t) => h("option", { value: t }, t)));
    } else {
      input = h("input", { id: `vm-${name}`, name, ...attrs });
    }
    inputs[name] = input;
    errors[name] = h("span", { class: "field-error", id: `error-${name}`, role: "alert" });
    input.setAttribute("aria-describedby", `error-${name}`);
    return h("label", {}, title, input, errors[name]);
  });
  const display = h("input", { type: "checkbox", id: "vm-display", name: "display" });
  const start = h("input", { type: "checkbox", id: "vm-start", name: "start", checked: true });
  errors.display = h("span", { class: "field-error", id: "error-display" });

  const form = h("form", { class: "grid", id: "create-vm", novalidate: true, onsubmit: async (event) => {
    event.preventDefault();
    for (const span of Object.values(errors)) span.textContent = "";
    formError.textContent = "";
    const spec = {
      name: inputs.name.value.trim(),
      image: inputs.image.value,
      cpus: Number(inputs.cpus.value),
      memory_mb: Number(inputs.memory_mb.value),
      disk_gb: Number(inputs.disk_gb.value),
      labels: parseLabels(inputs.labels.value),
      network: { type: inputs.network.value },
      display: { type: display.checked ? "vnc" : "none" },
      start: start.checked,
    };
    try {
      const vm = await api("POST", "/api/v1/vms", spec);
      notify(`Created ${vm.name}`);
      form.reset();
    } catch (err) {
      showErrors(err, errors, formError);
    }
  } },
  controls,
  h("label", { class: "check" }, display, "Graphical display (VNC)"),
  h("label", { class: "check" }, start, "Start once created"),
  h("div", {}, h("button", { class: "primary", type: "submit" }, "Create VM")),
  formError);
  return h("section", { class: "card" }, h("h2", {}, "New VM"), form);
}

function parseLabels(text) {
  const labels = {};
  for (const item of text.split(",").map((s) => s.trim()).filter(Boolean)) {
    const [key, ...value] = item.split("=");
    labels[key.trim()] = value.join("=").trim();
  }
  return labels;
}

// An API error shown beside the fields its details name (VALIDATION_ERROR lists them).
function showErrors(err, fieldErrors, formError) {
  const listed = err.code === "VALIDATION_ERROR" && Array.isArray(err.details.errors) ? err.details.errors : [];
  let placed = false;
  for (const item of listed) {
    const field = String(item.field || "").split(".")[0];
    if (field in fieldErrors) {
      fieldErrors[field].textContent = item.message;
      placed = true;
    }
  }
  if (!placed) formError.textContent = err.message;
}

// -- one VM ----------------------------------------------------------------------

async function vmView(signal, id) {
  let vm = await api("GET", `/api/v1/vms/${id}`, undefined, signal);
  const title = h("h1", {});
  const overview = h("section", { class: "card", id: "overview" });
  const history = h("ol", { class: "history", id: "history" });
  const drawVm = () => {
    title.replaceChildren(vm.name, stateBadge(vm.state), h("span", { class: "actions" }, actionButtons(vm)));
    overview.replaceChildren(h("h2", {}, "Spec"), specList(vm), h("details", {}, h("summary", {}, "JSON"), h("pre", {}, JSON.stringify(vm, null, 2))));
    agent.replaceChildren(h("h2", {}, "Guest agent"), vm.guest_agent.connected
      ? h("p", { id: "agent-status" }, `connected (qemu-ga ${vm.guest_agent.version || "?"})`)
      : h("p", { id: "agent-status", class: "muted" }, "not connected"));
  };
  const agent = h("section", { class: "card", id: "agent" });
  drawVm();
  main.append(
    h("p", {}, h("a", { href: "/ui", "data-link": true }, "← All VMs")),
    title,
    h("div", { class: "grid2" }, overview,
      h("div", {}, agent, h("section", { class: "card" }, h("h2", {}, "State history"), history))),
    chartsSection(id, signal),
    consoleSection(id, signal),
    vm.display.type === "vnc" ? displaySection(id, signal) : null,
    execSection(id),
  );
  follow(`/api/v1/events?vm_id=${encodeURIComponent(id)}&after=0`, async (type, event) => {
    const note = event.data.state ? `${event.data.state}${event.data.reason ? " — " + event.data.reason : ""}` : "";
    history.append(h("li", {}, `${new Date(event.time).toLocaleTimeString()} ${type} ${note}`));
    if (type === "vm.deleted") return navigate("/ui");
    try {
      vm = await api("GET", `/api/v1/vms/${id}`, undefined, signal);
      drawVm();
    } catch { /* the view is gone or the VM with it */ }
  }, signal);
}

function specList(vm) {
  const rows = [
    ["id", vm.id], ["image", vm.image], ["cpus", vm.cpus], ["memory", `${vm.memory_mb} MB`],
    ["disk", `${vm.disk_gb} GB`], ["network", vm.network.type], ["display", vm.display.type],
    ["labels", Object.entries(vm.labels).map(([k, v]) => `${k}=${v}`).join(", ") || "—"],
    ["accelerator", vm.accelerator || "—"], ["state reason", vm.state_reason || "—"],
    ["created", new Date(vm.created_at).toLocaleString()],
  ];
  return h("dl", { class: "spec" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

// Live charts of the metrics endpoint (no event carries these figures: it is read
// every 2 s while the page is open and the VM runs).
function chartsSection(id, signal) {
  const section = h("section", { class: "card", id: "charts" }, h("h2", {}, "Figures"));
  const status = h("p", { class: "muted" }, "Waiting for the VM to run…");
  const grid = h("div", { class: "charts" });
  section.append(status, grid);
  import(`${VENDOR}/uplot/dist/uPlot.esm.js`).then(({ default: uPlot }) => {
    const width = () => Math.max(280, Math.min(380, grid.clientWidth - 20));
    const make = (label, series) => {
      const data = [[], ...series.map(() => [])];
      const plot = new uPlot({
        title: label, width: width(), height: 160,
        series: [{}, ...series.map((s, i) => ({ label: s, stroke: ["#1f5fbf", "#b42318"][i] }))],
      }, data, grid);
      return { plot, data };
    };
    const cpu = make("CPU %", ["cpu"]);
    const mem = make("Memory (MiB)", ["rss"]);
    const disk = make("Disk I/O (KiB/s)", ["read", "write"]);
    let last = null;
    const tick = async () => {
      if (signal.aborted) return;
      try {
        const m = await api("GET", `/api/v1/vms/${id}/metrics`, undefined, signal);
        const t = Date.now() / 1000;
        status.textContent = `uptime ${Math.round(m.uptime_seconds)} s · memory ${bytes(m.memory_rss_bytes)} of ${bytes(m.memory_configured_bytes)}`;
        const push = (chart, values) => {
          chart.data[0].push(t);
          values.forEach((v, i) => chart.data[i + 1].push(v));
          if (chart.data[0].length > 90) chart.data.forEach((a) => a.shift());
          chart.plot.setData(chart.data);
        };
        push(cpu, [m.cpu_percent]);
        push(mem, [m.memory_rss_bytes / 1048576]);
        if (last) {
          const dt = Math.max(t - last.t, 0.001);
          push(disk, [(m.disk_read_bytes - last.r) / 1024 / dt, (m.disk_write_bytes - last.w) / 1024 / dt]);
        }
        last = { t, r: m.disk_read_bytes, w: m.disk_write_bytes };
      } catch (err) {
        if (err.status === 409) status.textContent = "The VM is not running.";
      }
      setTimeout(tick, 2000);
    };
    tick();
  });
  return section;
}

// A console websocket URL with a fresh single-use token.
async function consoleUrl(id, kind) {
  const { token } = await api("POST", `/api/v1/vms/${id}/console/token`, { kind });
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const path = kind === "vnc" ? "display" : "console";
  return `${scheme}//${location.host}/api/v1/vms/${id}/${path}?token=${encodeURIComponent(token)}`;
}

function consoleSection(id, signal) {
  const box = h("div", { class: "terminal", id: "terminal", hidden: true });
  const status = h("span", { class: "muted", id: "console-status" }, "closed");
  let term = null;
  let socket = null;
  const open = async () => {
    if (socket) return;
    const [{ Terminal }, { FitAddon }] = await Promise.all([
      import(`${VENDOR}/@xterm/xterm/lib/xterm.mjs`),
      import(`${VENDOR}/@xterm/addon-fit/lib/addon-fit.mjs`),
    ]);
    box.hidden = false;
    if (!term) {
      term = new Terminal({ convertEol: false, cursorBlink: true, fontSize: 14, scrollback: 5000 });
      const fit = new FitAddon();
      term.loadAddon(fit);
      term.open(box);
      fit.fit();
      const observer = new ResizeObserver(() => fit.fit());
      observer.observe(box);
      signal.addEventListener("abort", () => observer.disconnect());
      term.onData((data) => socket && socket.readyState === WebSocket.OPEN && socket.send(data));
      window.hmTerminal = term; // for the browser tests: the buffer's text
    }
    try {
      // What the VM printed before we attached (the log), then the live port.
      const log = await api("GET", `/api/v1/vms/${id}/console/log?tail=200`, undefined, signal);
      term.reset();
      term.write(log.lines.join("\r\n") + "\r\n");
      socket = new WebSocket(await consoleUrl(id, "serial"));
    } catch (err) {
      return notify(`console: ${err.message}`, true);
    }
    socket.binaryType = "arraybuffer";
    socket.onopen = () => { status.textContent = "connected"; term.focus(); socket.send("\r"); };
    socket.onmessage = (event) => term.write(new Uint8Array(event.data));
    socket.onclose = () => { status.textContent = "closed"; socket = null; };
    signal.addEventListener("abort", () => socket && socket.close());
  };
  const copy = async () => {
    if (term && term.hasSelection()) await navigator.clipboard.writeText(term.getSelection());
  };
  const paste = async () => {
    const text = await navigator.clipboard.readText();
    if (socket && text) socket.send(text);
  };
  return h("section", { class: "card", id: "console" },
    h("h2", {}, "Serial console"),
    h("div", { class: "actions" },
      h("button", { type: "button", id: "open-console", onclick: open }, "Open console"),
      h("button", { type: "button", onclick: () => socket && socket.close() }, "Close"),
      h("button", { type: "button", onclick: copy, title: "Copy the selected text" }, "Copy"),
      h("button", { type: "button", onclick: paste, title: "Type the clipboard into the console" }, "Paste"),
      status),
    box);
}

function displaySection(id, signal) {
  const screen = h("div", { class: "display", id: "display-screen", hidden: true });
  const status = h("span", { class: "muted", id: "display-status" }, "closed");
  let rfb = null;
  const open = async () => {
    if (rfb) return;
    const { default: RFB } = await import(`${VENDOR}/@novnc/novnc/core/rfb.js`);
    screen.hidden = false;
    rfb = new RFB(screen, await consoleUrl(id, "vnc"), { wsProtocols: [] });
    rfb.scaleViewport = true;
    rfb.addEventListener("connect", () => { status.textContent = "connected"; });
    rfb.addEventListener("disconnect", () => { status.textContent = "closed"; rfb = null; });
    signal.addEventListener("abort", () => rfb && rfb.disconnect());
  };
  return h("section", { class: "card", id: "display" },
    h("h2", {}, "Display"),
    h("div", { class: "actions" },
      h("button", { type: "button", id: "open-display", onclick: open }, "Open display"),
      h("button", { type: "button", onclick: () => rfb && rfb.sendCtrlAltDel() }, "Ctrl+Alt+Del"),
      h("button", { type: "button", onclick: () => rfb && rfb.disconnect() }, "Close"),
      status),
    screen);
}

function execSection(id) {
  const command = h("input", { id: "exec-command", size: 50, placeholder: "uname -a", "aria-label": "Command (run by /bin/sh -c)" });
  const output = h("pre", { id: "exec-output", hidden: true });
  const form = h("form", { class: "row", onsubmit: async (event) => {
    event.preventDefault();
    output.hidden = false;
    output.textContent = "running…";
    try {
      const result = await api("POST", `/api/v1/vms/${id}/exec?wait_agent=30`, { command: ["/bin/sh", "-c", command.value] });
      output.textContent = `${result.stdout || ""}${result.stderr || ""}\n[exit ${result.exit_code ?? result.signal ?? result.status}]`;
    } catch (err) {
      output.textContent = `${err.code}: ${err.message}`;
    }
  } }, command, h("button", { type: "submit" }, "Run"));
  return h("section", { class: "card", id: "exec" }, h("h2", {}, "Run a command in the guest"), form, output);
}

// -- host, keys, audit -----------------------------------------------------------

async function hostView(signal) {
  const [host, devices] = await Promise.all([
    api("GET", "/api/v1/host", undefined, signal),
    api("GET", "/api/v1/host/devices", undefined, signal),
  ]);
  const facts = Object.entries(host).filter(([, v]) => typeof v !== "object" || v === null);
  main.append(
    h("h1", {}, "Host"),
    h("section", { class: "card", id: "host-facts" }, h("h2", {}, "Facts"),
      h("dl", { class: "spec" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]))),
    h("section", { class: "card", id: "capabilities" }, h("h2", {}, "Capabilities"),
      table(["Capability", "Available", "Why not"], Object.entries(host.capabilities || {}).map(([name, c]) =>
        h("tr", {}, h("td", {}, name), h("td", {}, c.available ? "yes" : "no"), h("td", {}, c.reason || ""))))),
    h("section", { class: "card", id: "devices" }, h("h2", {}, "PCI devices"),
      devices.devices.length
        ? table(["Address", "Kind", "Class", "Vendor:device", "Driver", "IOMMU group", "Passthrough", "In use by"], devices.devices.map((d) =>
          h("tr", {}, h("td", {}, d.address), h("td", {}, d.kind), h("td", {}, d.class_name),
            h("td", {}, `${d.vendor_id}:${d.device_id}`), h("td", {}, d.driver || "—"),
            h("td", {}, d.iommu_group ?? "—"),
            h("td", {}, d.passthrough.possible ? "yes" : (d.passthrough.reason || "no")),
            h("td", {}, d.in_use_by || "—"))))
        : h("p", { class: "muted" }, "No PCI devices to show.")),
  );
}

async function keysView(signal) {
  const keys = await api("GET", "/api/v1/keys", undefined, signal);
  const name = h("input", { id: "key-name", placeholder: "name", required: true, "aria-label": "Key name" });
  const tier = h("select", { id: "key-tier", "aria-label": "Tier" }, ["free", "pro", "enterprise"].map((t) => h("option", {}, t)));
  const admin = h("input", { type: "checkbox", id: "key-admin" });
  const shown = h("p", { id: "new-key", role: "status" });
  main.append(
    h("h1", {}, "API keys"),
    h("section", { class: "card" }, table(["Name", "Tenant", "Tier", "Admin", "Prefix", "Created", "Revoked", ""],
      keys.keys.map((k) => h("tr", {}, h("td", {}, k.name), h("td", {}, k.tenant), h("td", {}, k.tier),
        h("td", {}, k.admin ? "yes" : ""), h("td", {}, h("code", {}, k.prefix)),
        h("td", {}, new Date(k.created_at).toLocaleString()), h("td", {}, k.revoked_at ? new Date(k.revoked_at).toLocaleString() : ""),
        h("td", {}, k.revoked_at ? "" : h("button", { type: "button", class: "danger", onclick: async () => {
          if (!(await confirmAction(`Revoke the key ${k.name}?`))) return;
          await api("DELETE", `/api/v1/keys/${k.id}`);
          render();
        } }, "Revoke")))))),
    h("section", { class: "card" }, h("h2", {}, "New key"),
      h("form", { class: "row", onsubmit: async (event) => {
        event.preventDefault();
        try {
          const made = await api("POST", "/api/v1/keys", { name: name.value, tier: tier.value, admin: admin.checked });
          shown.textContent = `Key for ${made.name} (shown once): ${made.key}`;
        } catch (err) {
          shown.textContent = err.message;
        }
      } }, name, tier, h("label", { class: "row" }, admin, "admin"), h("button", { type: "submit" }, "Create")), shown),
  );
}

async function auditView(signal) {
  const body = h("tbody", {});
  const more = h("button", { type: "button", hidden: true }, "Older entries");
  let cursor = null;
  const load = async () => {
    const page = await api("GET", "/api/v1/audit?limit=100" + (cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""), undefined, signal);
    body.append(...page.entries.map((e) => h("tr", {}, h("td", {}, new Date(e.time).toLocaleString()),
      h("td", {}, e.tenant), h("td", {}, e.operation), h("td", {}, e.target || ""), h("td", {}, e.outcome),
      h("td", {}, h("code", {}, JSON.stringify(e.details))))));
    cursor = page.next_cursor;
    more.hidden = !cursor;
  };
  more.addEventListener("click", load);
  main.append(h("h1", {}, "Audit log"), h("section", { class: "card" },
    table(["Time", "Tenant", "Operation", "Target", "Outcome", "Details"], []), more));
  main.querySelector("tbody").replaceWith(body);
  await load();
}

// -- start -----------------------------------------------------------------------

document.getElementById("sign-out").addEventListener("click", () => signOut());
(async () => {
  const health = await (await fetch("/health")).json();
  session.open = health.auth === "open";
  if (session.open || sessionStorage.getItem(KEY)) await whoAmI();
  render();
})();
