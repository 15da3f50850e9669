// Searchkit's own InstantSearch client: one _msearch per search, against ?es=<url>.
import Client from "@searchkit/instantsearch-client";
import Searchkit from "searchkit";
import instantsearch from "instantsearch.js";
import { hits, refinementList, searchBox, stats } from "instantsearch.js/es/widgets";

const params = new URLSearchParams(location.search);
const sk = new Searchkit({
  connection: { host: params.get("es") },
  search_settings: {
    search_attributes: ["title", "text"],
    result_attributes: ["title", "text", "category"],
    facet_attributes: [{ attribute: "category", field: "category", type: "string" }],
  },
});
const search = instantsearch({ indexName: params.get("index"), searchClient: Client(sk) });
search.addWidgets([
  searchBox({ container: "#searchbox", searchAsYouType: true }),
  stats({ container: "#stats", templates: { text: (data) => `total:${data.nbHits}` } }),
  refinementList({ container: "#facets", attribute: "category" }),
  hits({
    container: "#hits",
    templates: { item: (hit, { html }) => html`<span class="hit" data-id="${hit.objectID}">${hit.title}</span>` },
  }),
]);
search.start();
