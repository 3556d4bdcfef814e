# Copies AnomalyScoutLib and the shipped models into the build tree's scripted-modules folder (run by the
# AnomalyScoutCopyLibrary target on every build; file(COPY) skips files that are already up to date).
# Arguments: LIBRARY_DIR, MODELS_DIR, DESTINATION, MODELS_DESTINATION (relative to DESTINATION).
file(COPY ${LIBRARY_DIR}
  DESTINATION ${DESTINATION}
  FILES_MATCHING
    PATTERN "*.py"
    PATTERN "*.json"
    PATTERN "__pycache__" EXCLUDE
  )
file(COPY ${MODELS_DIR}/
  DESTINATION ${DESTINATION}/${MODELS_DESTINATION}
  FILES_MATCHING
    PATTERN "*.safetensors"
    PATTERN "*.md"
    PATTERN "*.png"
  )
