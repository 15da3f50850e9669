// ReactiveSearch 3.x against a plain OpenSearch URL (enableAppbase off): one _msearch (NDJSON) per search.
import React from "react";
import ReactDOM from "react-dom";
import { DataSearch, MultiList, ReactiveBase, ReactiveList } from "@appbaseio/reactivesearch";

const params = new URLSearchParams(location.search);

function App() {
  return (
    <ReactiveBase url={params.get("es")} app={params.get("index")} enableAppbase={false}>
      <DataSearch componentId="q" dataField={["title", "text"]} autosuggest={false} debounce={0} URLParams={false}
        innerRef={(el) => el && (el.id = "q")} />
      <MultiList componentId="category" dataField="category" showSearch={false} showCheckbox={false}
        react={{ and: ["q"] }}
        renderItem={(label, count) => <span className="facet">{`${label}:${count}`}</span>} />
      <ReactiveList componentId="results" dataField="_score" size={10} pagination={false} showResultStats
        react={{ and: ["q", "category"] }}
        renderResultStats={(s) => <div id="rs-stats">{`total:${s.numberOfResults}`}</div>}
        onError={(error) => { document.getElementById("error").textContent = String(error && (error.message || JSON.stringify(error))); }}
        renderItem={(item) => <span className="hit" key={item._id} data-id={item._id}>{item.title}</span>} />
    </ReactiveBase>
  );
}

ReactDOM.render(<App />, document.getElementById("hits-root"));
