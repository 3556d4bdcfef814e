# Copies AnomalyScoutLib and the shipped models into the build tree's scripted-modules folder, from where
# slicerMacroBuildScriptedModule installs them. Run by the AnomalyScoutCopyLibrary target on every build
# (file(COPY) skips files that are already up to date). Arguments: LIBRARY_DIR, MODELS_DIR, DESTINATION.
# The patterns say which kinds of file ship (Testing/test_cmake_lists.py checks every file matches one).
file(COPY ${LIBRARY_DIR}
  DESTINATION ${DESTINATION}
  FILES_MATCHING
    PATTERN "*.py"
    PATTERN "*.json"
    PATTERN "__pycache__" EXCLUDE
  )
file(COPY ${MODELS_DIR}/
  DESTINATION ${DESTINATION}/Resources/Models
  FILES_MATCHING
    PATTERN "*.safetensors"
    PATTERN "*.md"
    PATTERN "*.png"
  )
