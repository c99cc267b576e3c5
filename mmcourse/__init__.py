"""mmcourse: the small, tested package behind the mmcourse book, in three layers.

- **The teaching core**, one idea per module, each readable top to bottom in one sitting, in the order the book
  builds them: ``attention``, ``positional``, ``layers``, ``transformer``, ``tokenizers``, ``bpe``, ``bert``, ``gpt``,
  ``generation``, ``vision``, ``clip``, ``fusion``, ``finetune``, ``lora``, ``adversarial``, ``distillation``,
  ``continual``, ``prompting``, ``alignment``, ``vlm``, ``judge``, ``vqvae``, ``dalle``, ``diffusion``, ``unet``,
  ``train``, ``memory``, ``distributed``; ``checks`` holds the input checks they share. Configs validate themselves
  once; public functions check their inputs once, where they enter; nothing on a forward pass reads its data to
  check it.
- **Conversions** (``mmcourse.convert``): every bridge to Hugging Face transformers and to torch's own layers, one
  module per model, each beside its parity tests (``tests/convert``).
- **The book's machinery** (``mmcourse.book``): profiles, recorded results, the one notebook executor, bench (and
  the minimal GPT it measures ours against), runbook, Colab set-up, online guards, widgets and figures. The teaching
  core never imports it.

``mmcourse.data`` has one module per data source (generated, or installed offline from a package registry), and
``mmcourse.exercises`` the auto-checkers of each chapter's exercises.
"""

__version__ = "0.1.0"
