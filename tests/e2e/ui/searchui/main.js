// Elastic Search UI's headless core with its Elasticsearch connector: one _search per search.
import { SearchDriver } from "@elastic/search-ui";
import ElasticsearchAPIConnector from "@elastic/search-ui-elasticsearch-connector";

const params = new URLSearchParams(location.search);
const driver = new SearchDriver({
  apiConnector: new ElasticsearchAPIConnector({ host: params.get("es"), index: params.get("index") }),
  trackUrlState: false,
  alwaysSearchOnInitialLoad: false,
  searchQuery: {
    search_fields: { title: {}, text: {} },
    result_fields: { title: { raw: {} } },
    facets: { category: { type: "value", size: 10 } },
  },
  initialState: { resultsPerPage: 10 },
});

const el = (id) => document.getElementById(id);
driver.subscribeToStateChanges((state) => {
  if (state.isLoading) return;
  el("stats").textContent = `total:${state.totalResults}`;
  el("hits").replaceChildren(
    ...state.results.map((r) => {
      const hit = Object.assign(document.createElement("span"), { className: "hit", textContent: r.title ? r.title.raw : "" });
      hit.dataset.id = r.id.raw;
      return hit;
    }),
  );
  const facet = (state.facets.category || [])[0];
  el("facets").replaceChildren(
    ...(facet ? facet.data : []).map((b) => Object.assign(document.createElement("span"), {
      className: "facet", textContent: `${b.value}:${b.count}`,
    })),
  );
  if (state.error) el("error").textContent = state.error;
});
el("searchbox").innerHTML = '<input id="q" type="search">';
el("q").addEventListener("input", (event) => driver.getActions().setSearchTerm(event.target.value, { shouldClearFilters: false }));
