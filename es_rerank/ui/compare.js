// The compare page: the same query twice through es-rerank, once with reranking off
// (x-rerank-enabled: false, OpenSearch's own order) and once as configured.
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let served = null; // the reranked column's answer: its UBI query id and arm when an experiment recorded it

// The page's user, in a cookie of es-rerank's own origin: an experiment whose keys include
// cookie:es_rerank_client assigns the page's searches (and its clicks go with them).
function clientId() {
  const found = document.cookie.split("; ").find((c) => c.startsWith("es_rerank_client="));
  if (found) return decodeURIComponent(found.split("=")[1]);
  const id = self.crypto && crypto.randomUUID ? crypto.randomUUID() : `c-${Date.now()}-${Math.random().toString(36).slice(2)}`;
  document.cookie = `es_rerank_client=${encodeURIComponent(id)}; path=/; max-age=31536000; samesite=lax`;
  return id;
}

function text(value) {
  if (value == null) return "";
  if (Array.isArray(value)) return value.map(text).join(" ");
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

function titleOf(hit) {
  const src = hit._source || {};
  for (const key of ["title", "name", "headline", "subject"]) if (src[key]) return text(src[key]);
  const first = Object.values(src).find((v) => typeof v === "string");
  return first ? first.slice(0, 80) : hit._id;
}

function snippetOf(hit) {
  const src = hit._source || {};
  for (const key of ["text", "body", "content", "abstract", "description"]) if (src[key]) return text(src[key]);
  return Object.values(src).filter((v) => typeof v === "string").slice(1).join(" ");
}

function setStatus(message, error = false) {
  $("status").textContent = message;
  $("status").className = error ? "error" : "";
}

async function loadIndices() {
  const answer = await fetch("/_cat/indices?format=json&h=index&s=index");
  if (!answer.ok) throw new Error(`cannot list indices (HTTP ${answer.status})`);
  const names = (await answer.json()).map((row) => row.index).filter((n) => !n.startsWith("."));
  const select = $("index");
  select.replaceChildren(...names.map((n) => Object.assign(document.createElement("option"), { value: n, textContent: n })));
  if (params.get("index") && names.includes(params.get("index"))) select.value = params.get("index");
}

async function search(index, query, size, rerank) {
  const headers = { "Content-Type": "application/json" };
  if (!rerank) headers["x-rerank-enabled"] = "false";
  const body = { size, query: { multi_match: { query, fields: ["*"], lenient: true } } };
  const answer = await fetch(`/${encodeURIComponent(index)}/_search`, { method: "POST", headers, body: JSON.stringify(body) });
  const data = await answer.json();
  if (!answer.ok) {
    const reason = data && data.error ? (data.error.reason || data.error.type || text(data.error)) : `HTTP ${answer.status}`;
    throw new Error(`${rerank ? "reranked" : "BM25"} search failed: ${reason}`);
  }
  const h = (name) => answer.headers.get(name);
  return { data, rerank: h("x-rerank"), reason: h("x-rerank-reason"), model: h("x-rerank-model"), window: h("x-rerank-window"),
           inferenceMs: h("x-rerank-inference-ms"), totalMs: h("x-rerank-total-ms"),
           queryId: h("x-rerank-query-id"), arm: h("x-rerank-arm") };
}

function hitItem(hit, position, showMove) {
  const li = document.createElement("li");
  li.dataset.id = hit._id;
  const title = Object.assign(document.createElement("span"), { className: "title", textContent: titleOf(hit) });
  const id = Object.assign(document.createElement("span"), { className: "id", textContent: hit._id });
  li.append(title, id);
  const first = hit._rerank && hit._rerank.first_stage_rank;
  if (showMove && first) {
    const moved = first - position;
    const mark = document.createElement("span");
    mark.className = "move " + (moved > 0 ? "up" : moved < 0 ? "down" : "same");
    mark.textContent = moved > 0 ? `\u25B2${moved} (was #${first})` : moved < 0 ? `\u25BC${-moved} (was #${first})` : "";
    mark.title = `first-stage rank ${first}`;
    li.dataset.firstStageRank = first;
    if (moved !== 0) li.append(mark);
  }
  const score = Object.assign(document.createElement("div"), { className: "score" });
  score.textContent = `score ${Number(hit._score).toFixed(3)}` +
    (hit._rerank ? ` \u00B7 BM25 ${Number(hit._rerank.first_stage_score).toFixed(3)}` : "");
  const snippet = Object.assign(document.createElement("div"), { className: "snippet", textContent: snippetOf(hit) });
  li.append(score, snippet);
  return li;
}

function render(column, result, showMove) {
  const hits = result.data.hits.hits;
  $(`${column}-hits`).replaceChildren(...hits.map((hit, i) => hitItem(hit, i + 1, showMove)));
  const total = result.data.hits.total;
  const count = typeof total === "object" ? `${total.value}${total.relation === "gte" ? "+" : ""}` : total;
  const parts = [`${count} hits`, `took ${result.data.took} ms`];
  if (showMove) {
    parts.unshift(`x-rerank: ${result.rerank}` + (result.reason ? ` (${result.reason})` : ""));
    if (result.arm) parts.push(`arm ${result.arm}`);
    if (result.model) parts.push(`model ${result.model}`);
    if (result.window) parts.push(`window ${result.window}`);
    if (result.inferenceMs) parts.push(`rerank ${Number(result.inferenceMs).toFixed(0)} ms`);
    if (result.totalMs) parts.push(`total ${Number(result.totalMs).toFixed(0)} ms`);
  }
  $(`${column}-meta`).textContent = parts.join(" \u00B7 ");
}

async function run() {
  const index = $("index").value;
  const query = $("q").value.trim();
  const size = Number($("size").value);
  if (!index || !query) return;
  document.body.dataset.state = "searching";
  setStatus(`searching [${index}] for "${query}"\u2026`);
  const url = new URL(location.href);
  url.searchParams.set("index", index);
  url.searchParams.set("q", query);
  history.replaceState(null, "", url);
  try {
    const [bm25, reranked] = await Promise.all([search(index, query, size, false), search(index, query, size, true)]);
    render("bm25", bm25, false);
    render("reranked", reranked, true);
    served = reranked;
    const moved = reranked.data.hits.hits.filter((h, i) => h._rerank && h._rerank.first_stage_rank !== i + 1).length;
    setStatus(`${moved} of ${reranked.data.hits.hits.length} hits moved`);
    document.body.dataset.state = "done";
  } catch (error) {
    setStatus(error.message, true);
    document.body.dataset.state = "error";
  }
}

// A click on a served hit is a UBI event when an experiment recorded the search (x-rerank-query-id).
async function clicked(event) {
  const li = event.target.closest("li");
  if (!li || !served || !served.queryId) return;
  const ordinal = [...li.parentNode.children].indexOf(li);
  const ubi = {
    action_name: "click", query_id: served.queryId, client_id: clientId(), message_type: "CLICK_THROUGH",
    timestamp: new Date().toISOString(), application: "es-rerank-compare",
    event_attributes: { object: { object_id: li.dataset.id, object_id_field: "_id" }, position: { ordinal } },
  };
  const answer = await fetch("/_rerank/ubi/events", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(ubi) });
  setStatus(answer.ok ? `click on ${li.dataset.id} recorded for query ${served.queryId}` : `click not recorded (HTTP ${answer.status})`, !answer.ok);
  document.body.dataset.clicks = String(Number(document.body.dataset.clicks || 0) + (answer.ok ? 1 : 0));
}

$("reranked-hits").addEventListener("click", clicked);
$("search").addEventListener("submit", (event) => { event.preventDefault(); run(); });
$("index").addEventListener("change", run);
$("size").addEventListener("change", run);

clientId();
loadIndices()
  .then(() => {
    if (params.get("size")) $("size").value = params.get("size");
    if (params.get("q")) { $("q").value = params.get("q"); run(); } else document.body.dataset.state = "ready";
  })
  .catch((error) => { setStatus(error.message, true); document.body.dataset.state = "error"; });
