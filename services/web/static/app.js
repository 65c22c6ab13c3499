// prospect web UI: plain ES module, no dependencies, no build step.
// Every value that came from the API (leads come from the web) is rendered with
// textContent / createTextNode, never as HTML. The token, when one is needed, lives in
// sessionStorage and only ever travels in the Authorization header, never in a URL.

const TOKEN_KEY = "prospect.token";
const TERMINAL = new Set(["JOB_STATUS_COMPLETED", "JOB_STATUS_FAILED", "JOB_STATUS_CANCELLED"]);
const STAGE_WORDS = {
  STAGE_UNSPECIFIED: "Queued",
  STAGE_QUEUED: "Queued",
  STAGE_DISCOVERING: "Discovering",
  STAGE_SCORING: "Scoring",
  STAGE_ENRICHING: "Enriching",
  STAGE_STORING: "Storing",
  STAGE_DONE: "Done",
};
const STATUS_WORDS = {
  JOB_STATUS_UNSPECIFIED: "Unknown",
  JOB_STATUS_PENDING: "Pending",
  JOB_STATUS_PROCESSING: "Processing",
  JOB_STATUS_COMPLETED: "Completed",
  JOB_STATUS_FAILED: "Failed",
  JOB_STATUS_CANCELLED: "Cancelled",
  JOB_STATUS_CANCELLING: "Cancelling",
  JOB_STATUS_FAILING: "Failing",
};
// Form input name -> CampaignConfig JSON name (and back, for fieldViolations).
const FIELDS = {
  business_type: "businessType",
  location: "location",
  max_results: "maxResults",
  min_confidence_score: "minConfidenceScore",
  budget_limit: "budgetLimit",
  verify_emails: "verifyEmails",
  target_verified_emails: "targetVerifiedEmails",
};
// An error event with one of these codes ends the watch; any other is retried.
const FATAL_CODES = new Set(["NOT_FOUND", "PERMISSION_DENIED", "UNAUTHENTICATED", "INVALID_ARGUMENT"]);
const JOBS_POLL_MS = 2000;
const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 10000;

const $ = (sel) => document.querySelector(sel);

// ---------------------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code || "";
    this.details = Array.isArray(details) ? details : [];
  }
}

function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

function authHeaders(extra = {}) {
  const headers = { Accept: "application/json", ...extra };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  return headers;
}

async function errorFrom(resp) {
  let code = "";
  let message = `${resp.status} ${resp.statusText}`.trim();
  let details = [];
  try {
    const body = await resp.json();
    if (body && body.error) {
      code = body.error.code || "";
      message = body.error.message || message;
      details = body.error.details || [];
    }
  } catch {
    // not JSON: keep the status line
  }
  const err = new ApiError(resp.status, code, message, details);
  if (resp.status === 401) needToken(err.message);
  return err;
}

async function api(path, { method = "GET", body, signal, headers } = {}) {
  const init = { method, headers: authHeaders(headers), signal, cache: "no-store" };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const resp = await fetch(path, init);
  if (!resp.ok) throw await errorFrom(resp);
  if (resp.status === 204) return {};
  return resp.json();
}

const jobPath = (id) => `/v1/jobs/${encodeURIComponent(id)}`;

// ---------------------------------------------------------------------------- helpers

function num(v) {
  const n = Number(v);
  return Number.isFinite(n) ? n : 0;
}

function dollars(micros, fallbackUsd) {
  const usd = micros !== undefined && micros !== null && micros !== ""
    ? num(micros) / 1e6
    : num(fallbackUsd);
  return `$${usd.toFixed(2)}`;
}

function setText(el, text) {
  el.textContent = text === undefined || text === null ? "" : String(text);
}

function showMessage(text, kind = "info") {
  const box = $("#message");
  if (!text) {
    box.hidden = true;
    setText(box, "");
    return;
  }
  box.className = `message${kind === "error" ? " error" : ""}`;
  box.dataset.kind = kind;
  setText(box, text);
  box.hidden = false;
}

function safeHttpUrl(raw) {
  if (!raw) return null;
  try {
    const url = new URL(String(raw));
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------- auth

function needToken(message) {
  $("#auth-panel").hidden = false;
  showMessage(
    token()
      ? `The server refused the token (${message}). Paste a valid token.`
      : "This server needs an access token: paste it above.",
    "error",
  );
}

function setupAuth() {
  $("#auth-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = $("#token").value.trim().replace(/^Bearer\s+/i, "");
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("#token").value = "";
    $("#auth-panel").hidden = true;
    showMessage("Token saved for this tab.");
    refreshJobs();
    if (state.jobId) openJob(state.jobId);
  });
  $("#forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showMessage("Token forgotten.");
  });
}

// ---------------------------------------------------------------------------- form

function clearFieldErrors() {
  for (const el of document.querySelectorAll(".field-error")) {
    el.hidden = true;
    setText(el, "");
  }
  for (const el of document.querySelectorAll("#campaign-form [aria-invalid]")) {
    el.removeAttribute("aria-invalid");
  }
}

// "config.max_results" / "config.maxResults" / "max_results" -> the form input name.
function inputNameFor(field) {
  const last = String(field || "").split(".").pop();
  if (last in FIELDS) return last;
  for (const [name, json] of Object.entries(FIELDS)) {
    if (json === last) return name;
  }
  if (last === "budget_limit_micros" || last === "budgetLimitMicros") return "budget_limit";
  return null;
}

function showViolations(err) {
  let shown = 0;
  const rest = [];
  for (const detail of err.details) {
    for (const v of (detail && detail.fieldViolations) || []) {
      const name = inputNameFor(v.field);
      const slot = name && document.querySelector(`[data-error-for="${name}"]`);
      if (slot) {
        setText(slot, v.description || "invalid value");
        slot.hidden = false;
        const input = document.querySelector(`#campaign-form [name="${name}"]`);
        if (input) input.setAttribute("aria-invalid", "true");
        shown += 1;
      } else {
        rest.push(`${v.field}: ${v.description}`);
      }
    }
  }
  const text = rest.length ? `${err.message} (${rest.join("; ")})` : err.message;
  showMessage(shown ? `Please fix the highlighted fields. ${text}` : text, "error");
}

function readConfig(form) {
  const data = new FormData(form);
  const int = (name) => {
    const raw = String(data.get(name) ?? "").trim();
    return raw === "" ? 0 : Math.trunc(Number(raw));
  };
  const budget = String(data.get("budget_limit") ?? "").trim();
  return {
    businessType: String(data.get("business_type") ?? "").trim(),
    location: String(data.get("location") ?? "").trim(),
    maxResults: int("max_results"),
    minConfidenceScore: int("min_confidence_score"),
    budgetLimit: budget === "" ? 0 : Number(budget),
    verifyEmails: form.elements.verify_emails.checked,
    targetVerifiedEmails: int("target_verified_emails"),
  };
}

function setupForm() {
  const form = $("#campaign-form");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearFieldErrors();
    showMessage("");
    const button = $("#submit");
    button.disabled = true;
    try {
      const job = await api("/v1/campaigns", { method: "POST", body: { config: readConfig(form) } });
      showMessage(`Campaign started: job ${job.id}.`);
      openJob(job.id, job);
      refreshJobs();
    } catch (err) {
      if (err instanceof ApiError) {
        if (err.status !== 401) showViolations(err);
      } else {
        showMessage(`Could not reach the server: ${err.message}`, "error");
      }
    } finally {
      button.disabled = false;
    }
  });
}

// ---------------------------------------------------------------------------- jobs list

let jobsTimer = null;
let jobsInFlight = false;

function renderJobs(jobs) {
  const list = $("#jobs-list");
  list.replaceChildren();
  $("#jobs-empty").hidden = jobs.length > 0;
  for (const job of jobs) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.jobId = job.id;
    button.dataset.status = job.status || "";
    if (job.id === state.jobId) button.setAttribute("aria-current", "true");
    const cfg = job.config || {};
    const name = document.createElement("span");
    name.className = "job-name";
    setText(name, `${cfg.businessType || "?"} in ${cfg.location || "?"}`);
    const st = document.createElement("span");
    st.className = "job-state";
    setText(st, `${STATUS_WORDS[job.status] || job.status || ""} · ${num(job.progress)}%`);
    const sub = document.createElement("span");
    sub.className = "job-sub";
    setText(sub, job.id);
    button.append(name, st, sub);
    button.addEventListener("click", () => openJob(job.id));
    li.append(button);
    list.append(li);
  }
}

async function refreshJobs() {
  if (jobsInFlight) return;
  jobsInFlight = true;
  clearTimeout(jobsTimer);
  let unfinished = false;
  try {
    const body = await api("/v1/jobs");
    const jobs = body.jobs || [];
    renderJobs(jobs);
    unfinished = jobs.some((j) => !TERMINAL.has(j.status));
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) {
      showMessage(`Could not list jobs: ${err.message}`, "error");
    }
  } finally {
    jobsInFlight = false;
  }
  // Live-ish: poll while any job is unfinished; otherwise refresh on the next change.
  if (unfinished) jobsTimer = setTimeout(refreshJobs, JOBS_POLL_MS);
}

// ---------------------------------------------------------------------------- job view

const state = {
  jobId: null,
  job: null,
  version: "", // Last-Event-ID: the version of the last update seen
  controller: null,
  leadsFor: null,
};

function renderJob(job, message) {
  if (!job || job.id !== state.jobId) return;
  // Updates may race (a GET answer after a newer stream event): never go back in version.
  if (state.job && num(job.version) < num(state.job.version)) return;
  const previous = state.job;
  state.job = job;
  const metrics = job.metrics || {};
  const cfg = job.config || {};
  const progress = Math.max(0, Math.min(100, num(job.progress)));
  setText($("#job-id"), job.id);
  setText($("#job-query"), `${cfg.businessType || ""} in ${cfg.location || ""}`);
  $("#progress").value = progress;
  setText($("#progress-text"), `${progress}%`);
  setText($("#stage"), STAGE_WORDS[job.stage] || "Queued");
  $("#stage").dataset.stage = job.stage || "STAGE_QUEUED";
  setText($("#status"), STATUS_WORDS[job.status] || job.status || "");
  $("#status").dataset.status = job.status || "";
  const qualified = num(metrics.qualifiedLeads);
  setText(document.querySelector('[data-counter="businesses"]'), num(metrics.businessesFound));
  setText(document.querySelector('[data-counter="qualified"]'), qualified);
  setText(
    document.querySelector('[data-counter="enriched"]'),
    `${num(metrics.leadsEnriched)}/${qualified}`,
  );
  setText(
    document.querySelector('[data-counter="cost"]'),
    dollars(metrics.totalCostMicros, metrics.totalCost),
  );
  if (message) setText($("#job-message"), message);
  const error = $("#job-error");
  error.hidden = !job.error;
  setText(error, job.error || "");
  // Keep the job's entry in the list in step with the live view.
  for (const b of document.querySelectorAll("#jobs-list button")) {
    if (b.dataset.jobId !== job.id) continue;
    b.dataset.status = job.status || "";
    const st = b.querySelector(".job-state");
    if (st) setText(st, `${STATUS_WORDS[job.status] || job.status || ""} · ${progress}%`);
  }
  const finished = TERMINAL.has(job.status);
  $("#cancel").hidden = finished || job.status === "JOB_STATUS_CANCELLING";
  if (job.status === "JOB_STATUS_COMPLETED") loadLeads(job.id);
  if (!previous || previous.status !== job.status) refreshJobs();
}

function stopWatching() {
  if (state.controller) state.controller.abort();
  state.controller = null;
}

function openJob(id, initial) {
  stopWatching();
  state.jobId = id;
  state.job = null;
  state.version = "";
  state.leadsFor = null;
  $("#job-view").hidden = false;
  $("#job-view").dataset.jobId = id;
  $("#results-section").hidden = true;
  $("#results tbody").replaceChildren();
  setText($("#job-message"), "");
  $("#connection").hidden = true;
  for (const b of document.querySelectorAll("#jobs-list button")) {
    b.toggleAttribute("aria-current", b.dataset.jobId === id);
  }
  if (location.hash !== `#job=${id}`) history.replaceState(null, "", `#job=${encodeURIComponent(id)}`);
  if (initial) renderJob(initial, initial.message);
  $("#job-view").scrollIntoView({ block: "nearest" });
  const controller = new AbortController();
  state.controller = controller;
  watch(id, controller.signal);
}

// Reads the job's Server-Sent Events with fetch + ReadableStream (EventSource cannot send
// an Authorization header), resuming from the last version seen after a dropped stream.
async function watch(id, signal) {
  let delay = RECONNECT_MIN_MS;
  while (!signal.aborted) {
    try {
      if (!state.job) {
        const job = await api(jobPath(id), { signal });
        renderJob(job);
      }
      if (state.job && TERMINAL.has(state.job.status)) {
        $("#connection").hidden = true;
        return;
      }
      const headers = authHeaders({ Accept: "text/event-stream" });
      if (state.version) headers["Last-Event-ID"] = state.version;
      const resp = await fetch(`${jobPath(id)}/events`, { headers, signal, cache: "no-store" });
      if (!resp.ok) {
        const err = await errorFrom(resp);
        if (resp.status === 401 || resp.status === 403 || resp.status === 404) {
          showMessage(`Cannot watch job ${id}: ${err.message}`, "error");
          return;
        }
        throw err;
      }
      $("#connection").hidden = true;
      delay = RECONNECT_MIN_MS;
      let failed = null;
      await readEvents(resp.body, signal, (ev) => {
        if (ev.id) state.version = ev.id;
        if (ev.event === "error") {
          // The watch failed after the stream began: {"error": {"code", "message"}}.
          try {
            failed = JSON.parse(ev.data).error || {};
          } catch {
            failed = {};
          }
          return;
        }
        if (ev.event && ev.event !== "update") return;
        let update;
        try {
          update = JSON.parse(ev.data);
        } catch {
          return;
        }
        if (update && update.job) {
          if (!ev.id && update.job.version) state.version = String(update.job.version);
          renderJob(update.job, update.message);
        }
      });
      if (state.job && TERMINAL.has(state.job.status)) return; // the stream's normal end
      if (failed) {
        const msg = failed.message || failed.code || "the watch failed";
        if (FATAL_CODES.has(failed.code)) {
          showMessage(`Cannot watch job ${id}: ${msg}`, "error");
          return;
        }
        throw new Error(msg);
      }
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError && err.status === 401) return;
      const c = $("#connection");
      setText(c, `Connection lost (${err.message}); reconnecting…`);
      c.hidden = false;
    }
    if (signal.aborted) return;
    await sleep(delay, signal);
    delay = Math.min(delay * 2, RECONNECT_MAX_MS);
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

// A minimal text/event-stream parser (https://html.spec.whatwg.org/#event-stream-interpretation).
async function readEvents(body, signal, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let ev = { id: "", event: "", data: [] };
  const dispatch = () => {
    if (ev.data.length) onEvent({ id: ev.id, event: ev.event, data: ev.data.join("\n") });
    ev = { id: "", event: "", data: [] };
  };
  const onAbort = () => reader.cancel().catch(() => {});
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + (buffer.startsWith("\r\n", nl) ? 2 : 1));
        if (line === "") {
          dispatch();
          continue;
        }
        if (line.startsWith(":")) continue; // comment / keep-alive
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "data") ev.data.push(val);
        else if (field === "event") ev.event = val;
        else if (field === "id" && !val.includes("\0")) ev.id = val;
      }
    }
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
}

// ---------------------------------------------------------------------------- results

async function loadLeads(id) {
  if (state.leadsFor === id) return;
  state.leadsFor = id;
  try {
    const leads = [];
    const seen = new Set();
    let pageToken = "";
    for (let page = 0; page < 50; page += 1) {
      const query = pageToken ? `?page_token=${encodeURIComponent(pageToken)}` : "";
      const body = await api(`${jobPath(id)}/leads${query}`);
      for (const lead of body.leads || []) {
        const key = lead.id || JSON.stringify(lead);
        if (!seen.has(key)) {
          seen.add(key);
          leads.push(lead);
        }
      }
      if (!body.nextPageToken || body.nextPageToken === pageToken) break;
      pageToken = body.nextPageToken;
    }
    if (state.jobId === id) renderLeads(leads);
  } catch (err) {
    state.leadsFor = null;
    if (!(err instanceof ApiError && err.status === 401)) {
      showMessage(`Could not load the results: ${err.message}`, "error");
    }
  }
}

function cell(row, text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.append(document.createTextNode(text === undefined || text === null ? "" : String(text)));
  row.append(td);
  return td;
}

function renderLeads(leads) {
  const tbody = $("#results tbody");
  tbody.replaceChildren();
  for (const lead of leads) {
    const tr = document.createElement("tr");
    tr.dataset.leadId = lead.id || "";
    cell(tr, lead.businessName);
    cell(tr, lead.address);
    cell(tr, lead.phone);
    const site = cell(tr, "");
    const href = safeHttpUrl(lead.website);
    if (href) {
      const a = document.createElement("a");
      a.href = href;
      a.rel = "noopener noreferrer";
      a.target = "_blank";
      a.textContent = lead.website;
      site.append(a);
    } else if (lead.website) {
      site.textContent = lead.website;
    }
    cell(tr, lead.rating ? num(lead.rating).toFixed(1) : "", "num");
    cell(tr, num(lead.confidenceScore), "num");
    cell(tr, lead.email);
    cell(tr, lead.emailStatus);
    // The waterfall step that found the email (website, pattern, hunter, cache): text only.
    cell(tr, lead.emailSource);
    cell(tr, dollars(lead.costMicros, lead.cost), "num");
    tbody.append(tr);
  }
  $("#results-empty").hidden = leads.length > 0;
  $("#results-section").hidden = false;
}

async function downloadCsv() {
  const id = state.jobId;
  if (!id) return;
  const button = $("#download-csv");
  button.disabled = true;
  try {
    const resp = await fetch(`${jobPath(id)}/leads?format=csv`, {
      headers: authHeaders({ Accept: "text/csv" }),
      cache: "no-store",
    });
    if (!resp.ok) throw await errorFrom(resp);
    const blob = await resp.blob();
    const url = URL.createObjectURL(blob);
    const a = document.createElement("a");
    a.href = url;
    a.download = `leads-${id}.csv`;
    a.rel = "noopener";
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) {
      showMessage(`Download failed: ${err.message}`, "error");
    }
  } finally {
    button.disabled = false;
  }
}

async function cancelJob() {
  const id = state.jobId;
  if (!id) return;
  const button = $("#cancel");
  button.disabled = true;
  try {
    const job = await api(`${jobPath(id)}:cancel`, { method: "POST" });
    renderJob(job);
    showMessage(`Cancel requested for job ${id}.`);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) {
      showMessage(`Cancel failed: ${err.message}`, "error");
    }
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------- start

function init() {
  setupAuth();
  setupForm();
  $("#cancel").addEventListener("click", cancelJob);
  $("#download-csv").addEventListener("click", downloadCsv);
  $("#refresh-jobs").addEventListener("click", refreshJobs);
  refreshJobs();
  const m = /^#job=(.+)$/.exec(location.hash);
  if (m) openJob(decodeURIComponent(m[1]));
  document.documentElement.dataset.ready = "true";
}

init();
