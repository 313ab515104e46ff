# Lets `pytest` import data.py / miar.py / train.py from the repo root.
