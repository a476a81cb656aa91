"""Start the app with its heavy imports (TensorFlow, Keras, OpenCV, plotly) done before the server listens.

``streamlit run`` would import them on the first page view, so the first person to open the app waits for
TensorFlow; here the server reports healthy only once they are loaded. Arguments go to ``streamlit run``.

    .venv/bin/python scripts/serve.py --server.port 8501
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import plotly.graph_objects  # noqa: E402,F401
import plotly.subplots  # noqa: E402,F401

import segcore.figures  # noqa: E402,F401
import segcore.infer  # noqa: E402,F401  - TensorFlow and Keras
import segcore.models  # noqa: E402,F401
import segcore.pipeline  # noqa: E402,F401

if __name__ == "__main__":
    from streamlit.web.cli import main

    from segcore.runtime import load_predictor

    # export the shipped model to the compiled runtime once (cached beside it), so no page view waits for that
    load_predictor(ROOT / "sample_data" / "models" / "default")[0].load()
    # and the Smart click network (exported to the compiled runtime on its first call), so no first click waits
    from segcore.interactive import load_model as load_click_model

    click = load_click_model()
    click.predict(np.zeros((1, click.config.net_size, click.config.net_size, click.config.channels), np.float32))
    # hide the ~400,000 objects of TensorFlow, Keras and the imports from the full collections Streamlit runs after
    # every script run (settle_heap says why; the app calls it again after each model load)
    from ui.heap import settle_heap

    settle_heap()

    sys.argv = ["streamlit", "run", str(ROOT / "app.py"), *sys.argv[1:]]
    sys.exit(main())
