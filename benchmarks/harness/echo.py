# mypy: disallow-untyped-decorators=False
"""A bare BentoML echo service: the latency/throughput floor the serving benchmark compares against.

It takes the same request body as ``POST /recommend`` (same pydantic validation, same worker
settings) and returns a response of the same shape without doing any work, so the ratio
``recsys / echo`` is what the recommender itself costs on top of BentoML's HTTP path.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml

from serving import schemas as api
from serving.runtime import ENV_WORKERS


@bentoml.service(name="echo", workers=int(os.environ.get(ENV_WORKERS, "1")), traffic={"timeout": 30})
class Echo:
    @bentoml.api(route="/recommend", input_spec=api.RecommendRequest, output_spec=api.RecommendResponse)
    async def recommend(self, **fields: Any) -> api.RecommendResponse:
        return api.RecommendResponse.model_construct(
            user_id=fields["user_id"], model_version="echo", items=[]
        )
