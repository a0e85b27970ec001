"""Where each demo's weights come from and under which terms, shown with the thread listing."""

DLIB_HOG = ("dlib frontal face HOG detector (built into dlib-bin): Boost Software License 1.0")
DLIB_68 = ("68-point shape predictor from face_recognition_models (package: Apache-2.0; model trained by "
           "Davis King on the iBUG 300-W data set, whose terms exclude commercial use)")
FACES = f"{DLIB_HOG}; {DLIB_68}"
FACES_AND_REFERENCE = f"{FACES}; reference face: Grace Hopper, US Navy portrait, public domain"
OOBLEX_TRAINED = "trained by a script in this repository on generated data: Apache-2.0 (same as Ooblex)"
