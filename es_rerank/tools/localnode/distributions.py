"""The two distributions es-rerank can run locally (OpenSearch, Elasticsearch OSS): their defaults and what differs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

DEFAULT_VERSION = "2.19.6"


# The last Apache-2.0 Elasticsearch; its OSS integ-test-zip runs on Java 17.
DEFAULT_ELASTICSEARCH_VERSION = "7.10.2"


Distribution = Literal["opensearch", "elasticsearch"]


@dataclass(frozen=True)
class _Flavor:
    """What differs between the two distributions."""

    name: str
    group: str
    executable: str
    java_home_env: str
    java_opts_env: str
    conf_env: str
    tmp_env: str


_FLAVORS: dict[str, _Flavor] = {
    "opensearch": _Flavor(
        name="OpenSearch",
        group="org.opensearch.distribution.integ-test-zip",
        executable="opensearch",
        java_home_env="OPENSEARCH_JAVA_HOME",
        java_opts_env="OPENSEARCH_JAVA_OPTS",
        conf_env="OPENSEARCH_PATH_CONF",
        tmp_env="OPENSEARCH_TMPDIR",
    ),
    "elasticsearch": _Flavor(
        name="Elasticsearch",
        group="org.elasticsearch.distribution.integ-test-zip",
        executable="elasticsearch",
        # 7.10 reads JAVA_HOME; ES_JAVA_HOME is what 7.12+ reads. Both are set.
        java_home_env="ES_JAVA_HOME",
        java_opts_env="ES_JAVA_OPTS",
        conf_env="ES_PATH_CONF",
        tmp_env="ES_TMPDIR",
    ),
}


_SAFE_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.\-_]*$")
