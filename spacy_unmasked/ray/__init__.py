"""spacy-unmasked on Ray: batch annotation (``spacy ray-apply``), serving
(``spacy ray-serve``) and the search over unmask specs. Needs the ``ray`` extra
(``pip install 'spacy-unmasked[ray]'``); the core package never imports this one."""
