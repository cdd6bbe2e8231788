"""HTTP serving over the engine: OpenAI-style completions and chat, streaming, Prometheus.

protocol.py     JSON body -> GenRequest, or an ApiError naming the field (4xx)
engine_loop.py  the engine in its own thread; submissions and cancels through a queue
metrics.py      Prometheus gauges, counters and histograms, updated after every step
app.py          FastAPI endpoints, disconnect -> cancel
responses.py    the OpenAI-style JSON bodies and server-sent-event chunks
running.py      RunningServer: uvicorn in a background thread
build.py        one warmed-up engine from experiments.serve's settings (experiments.server)
client.py       the load client: replay a trace over HTTP, records as metrics.RequestRecord
load.py         experiments.load: experiments.serve's trace over HTTP -> results.json
"""
