"""A grid search with scikit-learn on two cores: joblib runs the fits in loky's processes.

    python sklearn_search.py [n_samples]

A plain scikit-learn script: it has never heard of poolx.  Under
`poolx profile run --drop-in sklearn_search.py` joblib's default process
backend runs on poolx, so the fits show up in the profile, worker by worker.
"""

import sys
import time

from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GridSearchCV


def main(n_samples):
    X, y = make_classification(n_samples=n_samples, n_features=20, n_informative=8, random_state=0)
    grid = {"n_estimators": [20, 40], "max_depth": [4, 8]}
    search = GridSearchCV(RandomForestClassifier(random_state=0), grid, cv=3, n_jobs=2)
    start = time.perf_counter()
    search.fit(X, y)
    print(f"best {search.best_params_} score {search.best_score_:.3f}")
    print(f"{len(search.cv_results_['params']) * 3} fits in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000)
