  CreateDirectory "$INSTDIR\state"
  CreateDirectory "$INSTDIR\config"
  CreateDirectory "$INSTDIR\log"
  StrCpy $0 ""
  ${If} ${FileExists} "$INSTDIR\current.txt"
    FileOpen $1 "$INSTDIR\current.txt" r
    FileRead $1 $0
    FileClose $1
    ${TrimNewLines} "$0" $0
    ${IfNot} ${FileExists} "$INSTDIR\versions\$0\VERSION"
      StrCpy $0 ""
    ${EndIf}
  ${EndIf}
  StrCpy $2 "1"
  ${If} $0 != ""
    ${VersionCompare} "@VERSION@" "$0" $2
  ${EndIf}
  ; $2: 1 = this version is newer (or nothing is current), 0 = same, 2 = current is newer
  ${If} $2 == "1"
    ${If} $0 != ""
      StrCpy $R1 "$INSTDIR\previous.txt"
      StrCpy $R2 "$0"
      Call WriteVersionFile
    ${EndIf}
    StrCpy $R1 "$INSTDIR\current.txt"
    StrCpy $R2 "@VERSION@"
    Call WriteVersionFile
  ${EndIf}
