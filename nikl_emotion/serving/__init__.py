"""The serving layer: a model answering HTTP requests (`nikl-emotion serve`): what a request may hold
(`requests.py`), the model loaded once (`model.py`), concurrent requests batched together (`micro_batching.py`),
the FastAPI app (`app.py`) and the page to try a model (`page.html`)."""
